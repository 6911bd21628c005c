//go:build race

package param

// raceEnabled: under the race detector sync.Pool drops a share of what is put back, so the
// pooled scratch buffers are reallocated now and then and allocation counts mean nothing.
const raceEnabled = true
