package episode

// ClosedFor returns copies of the service's episodes among the last KeepClosed closed, most
// recently closed first, at most max of them (max <= 0: all). It copies only those.
func (t *Tracker) ClosedFor(name string, max int) []Episode {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Episode
	n := len(t.closed)
	for i := 1; i <= n && (max <= 0 || len(out) < max); i++ {
		// The ring's newest entry is at nClosed-1 (mod its length once it is full).
		e := &t.closed[int((t.nClosed-uint64(i))%uint64(n))]
		if e.Service == name {
			out = append(out, *e)
		}
	}
	return out
}
