package main

import (
	"net/netip"

	"github.com/meshguard/meshguard/flowmodel"
)

// firstSeen is the trivial baseline of issue 11: a flow to an (IP, port) its service did not
// use while learning scores 1 and alerts, anything else 0; the set is frozen when learning
// ends. A flow without an IP is keyed by its host name and port. It is a modeModel, so the
// split ends its learning as it ends the model's.
type firstSeen struct {
	learning map[string]bool
	seen     map[firstSeenKey]struct{}
}

type firstSeenKey struct {
	service string
	ip      netip.Addr
	host    string
	port    uint16
}

func newFirstSeen() *firstSeen {
	return &firstSeen{learning: map[string]bool{}, seen: map[firstSeenKey]struct{}{}}
}

// SetMode starts (learn) or ends (any other mode) a service's learning.
func (b *firstSeen) SetMode(service string, c flowmodel.ModeChange) error {
	b.learning[service] = c.Mode == flowmodel.ModeLearn
	return nil
}

// Decide implements evaluate.Decider.
func (b *firstSeen) Decide(f *flowmodel.Flow) flowmodel.Verdict {
	k := firstSeenKey{service: f.Service, ip: f.Destination.IP, port: f.Destination.Port}
	if !k.ip.IsValid() {
		k.host = f.Destination.Host
	}
	if b.learning[f.Service] {
		b.seen[k] = struct{}{}
		return flowmodel.Verdict{Mode: flowmodel.ModeLearn}
	}
	if _, ok := b.seen[k]; ok {
		return flowmodel.Verdict{Mode: flowmodel.ModeMonitor}
	}
	return flowmodel.Verdict{Mode: flowmodel.ModeMonitor, Action: flowmodel.Alert, Score: 1}
}
