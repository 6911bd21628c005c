package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"github.com/meshguard/meshguard/flowmodel/capture/capturetest"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/meshguard/meshguard/flowmodel"
)

// fuzzLinkTypes are the link types FuzzDecoder picks from.
var fuzzLinkTypes = []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeRaw, layers.LinkTypeLinuxSLL, layers.LinkTypeNull}

// encodePackets packs frames as FuzzDecoder reads them: a link-type byte, then each frame
// behind a 2-byte length.
func encodePackets(lt byte, frames [][]byte) []byte {
	out := []byte{lt}
	for _, f := range frames {
		out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

// checkFlow fails on a flow the model would reject.
func checkFlow(t *testing.T, f flowmodel.Flow) {
	if f.Service == "" || !f.Destination.Valid() || f.Source != Source || f.RequestBytes < -1 {
		t.Fatalf("bad flow %+v", f)
	}
	if f.Destination.Host != "" {
		if d, err := flowmodel.ParseDestination(f.Destination.Host); err != nil || d.Host != f.Destination.Host {
			t.Fatalf("flow host %q does not parse back: %v", f.Destination.Host, err)
		}
	}
}

// FuzzDecoder feeds arbitrary frames to a decoder: it must never panic, never fault the
// reassembler, and only emit well-formed flows.
func FuzzDecoder(f *testing.F) {
	sc := scenario(f, false, "pay.example.org")
	var frames [][]byte
	for _, p := range sc.Packets {
		frames = append(frames, p.Data)
	}
	f.Add(encodePackets(0, frames))
	f.Add(encodePackets(0, frames[3:22])) // the HTTP connection
	raw := &capturetest.Builder{T: f, RawIPv6: true}
	c := raw.Conn(ap(client6, 44000), ap(server6, 80))
	c.Handshake(at(0))
	c.Send(at(1), true, []byte(putRequest), 9)
	frames = frames[:0]
	for _, p := range raw.Packets {
		frames = append(frames, p.Data)
	}
	f.Add(encodePackets(1, frames))

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		lt := fuzzLinkTypes[int(data[0])%len(fuzzLinkTypes)]
		d, err := NewDecoder(Config{Service: BySourceIP, MaxHeaderBytes: 512}, func(f flowmodel.Flow) error {
			checkFlow(t, f)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		data = data[1:]
		for i := 0; len(data) >= 2; i++ {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
			frame := data[2 : 2+n]
			data = data[2+n:]
			if err := d.Packet(lt, frame, gopacket.CaptureInfo{Timestamp: at(i * 10), CaptureLength: n, Length: n}); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if n := d.Summary().Skipped[SkipReassemblyFault]; n != 0 {
			t.Fatalf("reassembler faulted %d times", n)
		}
	})
}

// FuzzRead reads arbitrary files: never a panic, whatever the error.
func FuzzRead(f *testing.F) {
	b := &capturetest.Builder{T: f}
	c := b.Conn(ap(client4, 41000), ap(apiIP, 80))
	c.Handshake(at(0))
	c.Send(at(10), true, []byte(postRequest), 40)
	c.Close(at(20))
	f.Add(b.Pcap())
	f.Add(b.Pcapng())
	f.Add(gz(f, b.Pcap()))
	f.Fuzz(func(t *testing.T, file []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = Read(ctx, bytes.NewReader(file), Config{Service: Fixed("svc")}, func(f flowmodel.Flow) error {
			checkFlow(t, f)
			return nil
		})
	})
}

// FuzzHTTPParser feeds an arbitrary stream in arbitrary pieces.
func FuzzHTTPParser(f *testing.F) {
	f.Add([]byte(postRequest+putRequest+getRequest), uint8(7))
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, size uint8) {
		p := httpParser{max: 256, onRequest: func(r *httpRequest) {
			if r.BodyBytes < -1 || r.Method == "" {
				t.Fatalf("bad request %+v", r)
			}
		}, onSkip: func(string, string) {}}
		n := max(int(size), 1)
		for len(stream) > 0 {
			k := min(n, len(stream))
			p.feed(stream[:k], at(0))
			stream = stream[k:]
			if len(p.buf) > p.max {
				t.Fatalf("buffered %d bytes, over the limit of %d", len(p.buf), p.max)
			}
		}
		p.end()
	})
}

// FuzzServerName parses arbitrary ClientHello bodies.
func FuzzServerName(f *testing.F) {
	f.Add(capturetest.ClientHello(f, "pay.example.org")[9:])
	f.Add(capturetest.ClientHello(f, "")[9:])
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = serverName(body)
	})
}
