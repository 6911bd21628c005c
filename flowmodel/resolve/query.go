package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ednsSize is the UDP payload size advertised (the DNS Flag Day 2020 value); a larger
// answer comes back truncated and is asked again over TCP.
const ednsSize = 1232

// names returns the names to try for key, in order, fully qualified.
func (r *Resolver) names(key string) []string {
	if len(r.cfg.Search) == 0 {
		return []string{key + "."}
	}
	absoluteFirst := strings.Count(key, ".") >= r.cfg.NDots
	out := make([]string, 0, len(r.cfg.Search)+1)
	if absoluteFirst {
		out = append(out, key+".")
	}
	for _, s := range r.cfg.Search {
		if s = strings.Trim(strings.ToLower(s), "."); s != "" {
			out = append(out, key+"."+s+".")
		}
	}
	if !absoluteFirst {
		out = append(out, key+".")
	}
	return out
}

// result is what one name says for one record type, or both.
type result struct {
	addrs    []netip.Addr
	ttl      uint32 // smallest TTL of the answer, or the negative TTL
	negative bool
	hasTTL   bool // for a negative result: the server gave an SOA
}

// tighter reports whether negative result x bounds its caching more tightly than y: x has
// an SOA TTL and y has none, or a longer one.
func (x result) tighter(y result) bool {
	return x.hasTTL && (!y.hasTTL || x.ttl < y.ttl)
}

// query looks key up: each candidate name in turn until one has addresses.
func (r *Resolver) query(ctx context.Context, key string) (Answer, error) {
	var neg *result
	for _, name := range r.names(key) {
		res, err := r.queryName(ctx, name)
		if err != nil {
			return Answer{}, err
		}
		if !res.negative {
			return Answer{Name: key, Addrs: res.addrs, Expires: r.cfg.Now().Add(r.clamp(res.ttl))}, nil
		}
		if neg == nil || res.tighter(*neg) {
			neg = &res
		}
	}
	ttl := r.cfg.NegativeTTL
	if neg.hasTTL {
		ttl = min(time.Duration(neg.ttl)*time.Second, ttl)
	}
	return Answer{Name: key, Negative: true, Expires: r.cfg.Now().Add(ttl)}, nil
}

func (r *Resolver) clamp(ttl uint32) time.Duration {
	return min(max(time.Duration(ttl)*time.Second, r.cfg.MinTTL), r.cfg.MaxTTL)
}

// queryName asks for the A and AAAA records of one name, at once.
func (r *Resolver) queryName(ctx context.Context, name string) (result, error) {
	type reply struct {
		res result
		err error
	}
	replies := make(chan reply, 2)
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		go func() {
			res, err := r.exchange(ctx, name, qtype)
			replies <- reply{res, err}
		}()
	}
	a, b := <-replies, <-replies
	switch {
	case a.err != nil && b.err != nil:
		return result{}, a.err
	case a.err != nil && b.res.negative, b.err != nil && a.res.negative:
		// One type failed and the other has nothing: the name is not known to be empty.
		return result{}, errors.Join(a.err, b.err)
	case a.err != nil:
		return b.res, nil // what the other type says is still true
	case b.err != nil:
		return a.res, nil
	}
	if a.res.negative && b.res.negative {
		if b.res.tighter(a.res) {
			return b.res, nil
		}
		return a.res, nil
	}
	res := result{ttl: ^uint32(0)}
	for _, x := range []result{a.res, b.res} {
		if !x.negative {
			res.addrs = append(res.addrs, x.addrs...)
			res.ttl = min(res.ttl, x.ttl)
		}
	}
	slices.SortFunc(res.addrs, netip.Addr.Compare)
	res.addrs = slices.Compact(res.addrs)
	return res, nil
}

// exchange asks the servers in turn for one record type of one name, falling back to TCP
// for a truncated answer. Each server gets an equal share of what is left of ctx's time.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (result, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(ednsSize, false)
	var errs []error
	for i, server := range r.cfg.Servers {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		actx, cancel := r.attemptContext(ctx, len(r.cfg.Servers)-i)
		resp, _, err := r.udp.ExchangeContext(actx, m, server)
		if err == nil && resp.Truncated {
			resp, _, err = r.tcp.ExchangeContext(actx, m, server)
		}
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			return answerOf(resp, qtype), nil
		case dns.RcodeNameError:
			return negativeOf(resp), nil
		default:
			errs = append(errs, fmt.Errorf("%s: %s for %s %s", server, dns.RcodeToString[resp.Rcode], name, dns.TypeToString[qtype]))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, errNoServer)
	}
	return result{}, fmt.Errorf("resolve %s: %w", strings.TrimSuffix(name, "."), errors.Join(errs...))
}

// attemptContext gives one server its share of the time left: all of it when it is the
// last to try.
func (r *Resolver) attemptContext(ctx context.Context, left int) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok || left <= 1 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Until(deadline)/time.Duration(left))
}

// answerOf reads the addresses of a successful response; one without any is negative (no
// data). The TTL is the smallest of the answer section, CNAMEs included.
func answerOf(resp *dns.Msg, qtype uint16) result {
	res := result{ttl: ^uint32(0)}
	for _, rr := range resp.Answer {
		res.ttl = min(res.ttl, rr.Header().Ttl)
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA {
				if ip, ok := netip.AddrFromSlice(v.A.To4()); ok {
					res.addrs = append(res.addrs, ip)
				}
			}
		case *dns.AAAA:
			if qtype == dns.TypeAAAA {
				if ip, ok := netip.AddrFromSlice(v.AAAA.To16()); ok {
					res.addrs = append(res.addrs, ip.Unmap())
				}
			}
		}
	}
	if len(res.addrs) == 0 {
		return negativeOf(resp)
	}
	return res
}

// negativeOf reads the negative-caching TTL of a response: the smaller of the SOA's TTL
// and its minimum field (RFC 2308, section 5).
func negativeOf(resp *dns.Msg) result {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return result{negative: true, hasTTL: true, ttl: min(soa.Hdr.Ttl, soa.Minttl)}
		}
	}
	return result{negative: true}
}
