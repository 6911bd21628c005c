package capture

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/meshguard/meshguard/flowmodel"
)

// MaxPacketBytes is the largest packet record read (tcpdump's largest snap length). A
// record claiming more ends reading as a corrupt file.
const MaxPacketBytes = 262_144

// maxNgBlock bounds a pcapng block: a packet plus generous room for options.
const maxNgBlock = MaxPacketBytes + 64<<10

// ErrFormat is returned (wrapped) when the input is neither pcap nor pcapng.
var ErrFormat = errors.New("not a pcap or pcapng file")

// Read decodes a pcap or pcapng capture (either may be gzip-compressed) from r and calls
// emit with each flow, in the order flows are recognised. Flow.Time is the packet timestamp,
// so times need not be monotonic across flows. An error from emit stops reading and is
// returned. A file that ends inside a record is not an error: it is counted as
// "truncated_file". A corrupt record stops reading: the summary of what was read is returned
// with the error.
func Read(ctx context.Context, r io.Reader, cfg Config, emit func(flowmodel.Flow) error) (Summary, error) {
	cr := &countingReader{r: r}
	d, err := NewDecoder(cfg, emit)
	if err != nil {
		return Summary{}, err
	}
	src, err := openSource(cr)
	if err != nil {
		return d.Summary(), err
	}
	progress := func(done bool) {
		if d.cfg.Progress != nil {
			d.cfg.Progress(Progress{Packets: d.sum.Packets, Bytes: cr.n, Flows: d.sum.Flows, Time: d.now, Done: done})
		}
	}
	var readErr error
	for n := int64(1); ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				readErr = err
				break
			}
		}
		data, ci, lt, err := src.next()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
			case errors.Is(err, io.ErrUnexpectedEOF):
				d.skip(SkipTruncatedFile, "file ends inside a packet record")
			default:
				readErr = fmt.Errorf("capture: reading packet %d: %w", n, err)
			}
			break
		}
		if err := d.Packet(lt, data, ci); err != nil {
			readErr = err
			break
		}
		if n%int64(d.cfg.ProgressEvery) == 0 {
			progress(false)
		}
	}
	if err := d.Close(); err != nil && readErr == nil {
		readErr = err
	}
	progress(true)
	return d.Summary(), readErr
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// packetSource is a pcap or pcapng reader.
type packetSource interface {
	next() (data []byte, ci gopacket.CaptureInfo, lt layers.LinkType, err error)
}

const (
	ngSectionHeader  = 0x0A0D0D0A
	ngByteOrderMagic = 0x1A2B3C4D
)

// openSource detects the format by its magic number.
func openSource(r io.Reader) (packetSource, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("capture: %w (%d bytes)", ErrFormat, len(magic))
	}
	if magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("capture: gzip: %w", err)
		}
		br = bufio.NewReaderSize(zr, 64<<10)
		if magic, err = br.Peek(4); err != nil {
			return nil, fmt.Errorf("capture: %w (%d bytes after gzip)", ErrFormat, len(magic))
		}
	}
	if binary.LittleEndian.Uint32(magic) == ngSectionHeader {
		return openNg(br)
	}
	switch binary.LittleEndian.Uint32(magic) {
	case 0xA1B2C3D4, 0xD4C3B2A1, 0xA1B23C4D, 0x4D3CB2A1:
	default:
		return nil, fmt.Errorf("capture: %w (magic % x)", ErrFormat, magic)
	}
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("capture: pcap header: %w", err)
	}
	// Accept records up to MaxPacketBytes whatever the header says (some writers exceed
	// their own snap length, as tcpdump and Wireshark tolerate), and no larger.
	pr.SetSnaplen(MaxPacketBytes)
	return &pcapSource{r: pr}, nil
}

type pcapSource struct{ r *pcapgo.Reader }

func (s *pcapSource) next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	data, ci, err := s.r.ZeroCopyReadPacketData()
	return data, ci, s.r.LinkType(), err
}

type ngSource struct{ r *pcapgo.NgReader }

func openNg(br *bufio.Reader) (src packetSource, err error) {
	defer func() {
		// pcapgo's pcapng reader can panic on corrupt input (a division by zero for an
		// absurd timestamp resolution, for one): report it as a corrupt file.
		if v := recover(); v != nil {
			src, err = nil, fmt.Errorf("capture: corrupt pcapng section header: %v", v)
		}
	}()
	r, err := pcapgo.NewNgReader(&ngGuard{r: br}, pcapgo.NgReaderOptions{WantMixedLinkType: true, SkipUnknownVersion: true})
	if err != nil {
		return nil, fmt.Errorf("capture: pcapng header: %w", err)
	}
	return &ngSource{r: r}, nil
}

func (s *ngSource) next() (data []byte, ci gopacket.CaptureInfo, lt layers.LinkType, err error) {
	defer func() {
		if v := recover(); v != nil {
			data, err = nil, fmt.Errorf("corrupt pcapng block: %v", v)
		}
	}()
	// ReadPacketData allocates the record's length, which ngGuard has bounded; the zero-copy
	// variant would allocate the interface's snap length, which nothing bounds.
	data, ci, err = s.r.ReadPacketData()
	if err != nil {
		return nil, ci, 0, err
	}
	if len(ci.AncillaryData) > 0 {
		lt, _ = ci.AncillaryData[0].(layers.LinkType)
	}
	return data, ci, lt, nil
}

// ngGuard passes a pcapng stream through unchanged while checking each block's framing, so
// that a corrupt length cannot make pcapgo allocate gigabytes or read a packet across block
// boundaries. It hands out at most one block per Read.
type ngGuard struct {
	r     *bufio.Reader
	left  int // bytes of the current block not yet passed on
	order binary.ByteOrder
	err   error
}

func (g *ngGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.left == 0 {
		if err := g.nextBlock(); err != nil {
			g.err = err
			return 0, err
		}
	}
	if len(p) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // inside a block
		}
		g.err = err
	}
	return n, err
}

// nextBlock checks the header of the block that starts here.
func (g *ngGuard) nextBlock() error {
	hdr, err := g.r.Peek(12)
	switch {
	case len(hdr) == 0 && (err == nil || errors.Is(err, io.EOF)):
		return io.EOF
	case len(hdr) < 8:
		return errorOrEOF(err)
	}
	typ := binary.LittleEndian.Uint32(hdr) // the section header type reads the same both ways
	if typ == ngSectionHeader {
		if len(hdr) < 12 {
			return io.ErrUnexpectedEOF
		}
		switch {
		case binary.BigEndian.Uint32(hdr[8:]) == ngByteOrderMagic:
			g.order = binary.BigEndian
		case binary.LittleEndian.Uint32(hdr[8:]) == ngByteOrderMagic:
			g.order = binary.LittleEndian
		default:
			return errors.New("pcapng: bad byte-order magic")
		}
	}
	if g.order == nil {
		return errors.New("pcapng: block before the section header")
	}
	typ = g.order.Uint32(hdr)
	total := g.order.Uint32(hdr[4:8])
	if total < 12 || total%4 != 0 || total > maxNgBlock {
		return fmt.Errorf("pcapng: bad block length %d", total)
	}
	switch typ {
	case 2, 6: // obsolete packet block, enhanced packet block: captured length at 20
		b, err := g.r.Peek(24)
		if len(b) < 24 {
			return errorOrEOF(err)
		}
		if caplen := g.order.Uint32(b[20:]); total < 32 || caplen > total-32 {
			return fmt.Errorf("pcapng: captured length %d exceeds its block of %d bytes", caplen, total)
		}
	case 3: // simple packet block: pcapgo reads the original length, capped by the snap length
		b, err := g.r.Peek(12)
		if len(b) < 12 {
			return errorOrEOF(err)
		}
		if orig := g.order.Uint32(b[8:]); orig > MaxPacketBytes {
			return fmt.Errorf("pcapng: simple packet of %d bytes", orig)
		}
	}
	g.left = int(total)
	return nil
}

func errorOrEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
