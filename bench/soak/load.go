package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/meshguard/meshguard/extproc"
	"github.com/meshguard/meshguard/extproc/envoysim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// conns are a few HTTP/2 connections to meshguard, as an Envoy's workers hold.
type conns struct {
	cc      []*grpc.ClientConn
	clients []extprocv3.ExternalProcessorClient
	next    atomic.Uint64
}

func dial(target string, n int) (*conns, error) {
	c := &conns{}
	for range n {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, err
		}
		c.cc = append(c.cc, cc)
		c.clients = append(c.clients, extprocv3.NewExternalProcessorClient(cc))
	}
	return c, nil
}

func (c *conns) pick() extprocv3.ExternalProcessorClient {
	return c.clients[(c.next.Add(1)-1)%uint64(len(c.clients))]
}

func (c *conns) close() {
	for _, cc := range c.cc {
		cc.Close()
	}
}

// mix is the traffic: services with known destinations, and a counter of never-seen ones.
type mix struct {
	services, dests int
	newShare        float64
	unseen          atomic.Uint32
}

func serviceName(i int) string { return fmt.Sprintf("soak-ns%d/svc%d", i%10, i) }

// knownDest is destination j of service i, in 198.18.0.0/15 (baselines are per service, so
// services far apart may share addresses).
func knownDest(i, j int) (netip.Addr, string) {
	ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>8&1), byte(i), byte(j + 1)})
	return ip, fmt.Sprintf("api%d.svc%d.example", j, i)
}

// request is the next request: a known destination, or with newShare a never-seen address
// (100.64.0.0/10), which enforce mode blocks. It reports which.
func (m *mix) request(r *rand.Rand) (envoysim.Request, bool) {
	i := r.IntN(m.services)
	if r.Float64() < m.newShare {
		n := m.unseen.Add(1)
		ip := netip.AddrFrom4([4]byte{100, 64 + byte(n>>16&63), byte(n >> 8), byte(n)})
		return buildRequest(i, ip, ""), true
	}
	ip, host := knownDest(i, r.IntN(m.dests))
	return buildRequest(i, ip, host), false
}

func buildRequest(svc int, ip netip.Addr, host string) envoysim.Request {
	name := serviceName(svc)
	ns, wl, _ := strings.Cut(name, "/")
	dst := netip.AddrPortFrom(ip, 443).String()
	authority := host
	if authority == "" {
		authority = ip.String()
	}
	return envoysim.Request{
		Attributes: map[string]string{
			extproc.AttrNodeNamespace: ns, extproc.AttrNodeWorkload: wl,
			extproc.AttrDestination: dst, extproc.AttrSourceAddress: "10.1.0.1:40000",
		},
		Headers: []envoysim.Header{
			{Key: ":method", Value: "GET"}, {Key: ":path", Value: "/v1/items"}, {Key: ":authority", Value: authority},
			{Key: ":scheme", Value: "https"}, {Key: "user-agent", Value: "soak"},
		},
		ResponseHeaders:    []envoysim.Header{{Key: ":status", Value: "200"}, {Key: "content-length", Value: "512"}},
		ResponseAttributes: map[string]string{extproc.AttrUpstreamAddress: dst},
	}
}

// counts are the outcomes of the requests of a run.
type counts struct {
	ok, blocked, timeouts, failed, dropped, wrong atomic.Int64
	firstErr                                      atomic.Pointer[error]

	mu        sync.Mutex
	latencies []time.Duration // of answered requests, first message to last answer
}

func (c *counts) answered() int64 { return c.ok.Load() + c.blocked.Load() }

func (c *counts) errors() int64 { return c.timeouts.Load() + c.failed.Load() + c.wrong.Load() }

func (c *counts) fail(err error) {
	c.firstErr.CompareAndSwap(nil, &err)
}

// percentile of the latencies, p in [0, 1].
func (c *counts) percentile(p float64) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.latencies) == 0 {
		return 0
	}
	s := slices.Clone(c.latencies)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// drive sends requests at rate until ctx is done, each on its own stream, at most
// maxInflight at once.
func drive(ctx context.Context, c *conns, m *mix, rate float64, timeout time.Duration, maxInflight int, cnt *counts) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxInflight)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var sent int64
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			due := int64(now.Sub(start).Seconds() * rate)
			for ; sent < due; sent++ {
				req, unseen := m.request(rng)
				select {
				case sem <- struct{}{}:
				default:
					cnt.dropped.Add(1)
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					one(ctx, c.pick(), req, unseen, timeout, cnt)
				}()
			}
		}
	}
}

// one plays one request and counts its outcome.
func one(ctx context.Context, client extprocv3.ExternalProcessorClient, req envoysim.Request, unseen bool, timeout time.Duration, cnt *counts) {
	t0 := time.Now()
	res, err := envoysim.Do(ctx, client, req, timeout)
	took := time.Since(t0)
	switch {
	case ctx.Err() != nil:
		return // the run is over, not the server
	case errors.Is(err, envoysim.ErrMessageTimeout):
		cnt.timeouts.Add(1)
		cnt.fail(err)
		return
	case err != nil:
		cnt.failed.Add(1)
		cnt.fail(err)
		return
	case unseen != (res.Immediate != nil):
		cnt.wrong.Add(1)
		cnt.fail(fmt.Errorf("request to an unseen address %v: blocked %v", unseen, res.Immediate != nil))
		return
	case unseen:
		cnt.blocked.Add(1)
	default:
		cnt.ok.Add(1)
	}
	cnt.mu.Lock()
	cnt.latencies = append(cnt.latencies, took)
	cnt.mu.Unlock()
}
