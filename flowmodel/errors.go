package flowmodel

import "errors"

var errEmptyDestination = errors.New("empty destination")

type destinationError struct {
	s, why string
}

func (e *destinationError) Error() string { return "destination " + quote(e.s) + ": " + e.why }

func quote(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return "\"" + s + "\""
}
