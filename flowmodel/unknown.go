package flowmodel

// Undecidable returns the verdict for a request of service that its caller could not turn
// into a complete Flow, for reasons rs (ReasonUnknownDestination: no destination could be
// established; ReasonIdentityMismatch: two identity sources name different services;
// ReasonInvalidRequest: the request is malformed). It fails closed: Block in enforce and
// quarantine, Alert in learn and monitor, with score 1 and reasons rs.
//
// Nothing is learned from such a request, in any mode, and an untracked service is not
// created: it is judged in Config.DefaultMode, and, once MaxServices are tracked, at least as
// strictly as Config.AtMaxServices. A tracked service counts the alert or block.
// Safe for concurrent use; it takes the service's lock and does no I/O.
func (m *Model) Undecidable(service string, rs Reasons) Verdict {
	v := Verdict{Mode: m.cfg.DefaultMode, Score: 1, Reasons: rs}
	s := m.lookup(service, false)
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		v.Mode = s.mode
	}
	v.Action = UndecidableAction(v.Mode)
	if s == nil && v.Action < m.cfg.AtMaxServices && m.atCapacity() {
		// Beyond MaxServices a new service gets AtMaxServices whatever it sends: an
		// undecidable request must not fare better than a well-formed one.
		v.Action = m.cfg.AtMaxServices
	}
	if s != nil {
		if v.Action == Block {
			s.blocked++
		} else {
			s.alerted++
		}
		m.markDirty(s)
	}
	return v
}

// UndecidableAction is the action for a request that cannot be decided, in mode: Block in
// enforce and quarantine, Alert otherwise. An invalid mode blocks.
func UndecidableAction(mode Mode) Action {
	switch mode {
	case ModeLearn, ModeMonitor:
		return Alert
	}
	return Block
}

// atCapacity reports whether MaxServices are tracked: a new service would not be.
func (m *Model) atCapacity() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.services) >= m.cfg.MaxServices
}
