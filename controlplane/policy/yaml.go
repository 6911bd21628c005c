package policy

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// node is one YAML value with the comment lines written above it. The generators build
// documents as node trees so that evidence comments sit next to what they explain, which
// no marshaller of Kubernetes types can do; the emitter decides quoting, so every scalar
// reads back as the type the schema wants.
type node struct {
	kind    nodeKind
	str     string // scalar text (string kind: unquoted value)
	keys    []string
	vals    []*node
	items   []*node
	comment []string // lines above the node (for a list item: above its dash)
}

type nodeKind uint8

const (
	kindString nodeKind = iota
	kindInt
	kindMap
	kindList
)

func str(s string) *node { return &node{kind: kindString, str: s} }

func num(n int) *node { return &node{kind: kindInt, str: strconv.Itoa(n)} }

func mapping() *node { return &node{kind: kindMap} }

func list(items ...*node) *node { return &node{kind: kindList, items: items} }

// set appends key: v to a mapping, in call order (generators add keys in a fixed order,
// so output is deterministic), and returns the mapping.
func (n *node) set(key string, v *node) *node {
	n.keys = append(n.keys, key)
	n.vals = append(n.vals, v)
	return n
}

// add appends items to a list and returns the list.
func (n *node) add(items ...*node) *node {
	n.items = append(n.items, items...)
	return n
}

// note appends comment lines and returns n.
func (n *node) note(lines ...string) *node {
	n.comment = append(n.comment, lines...)
	return n
}

func strs(ss ...string) *node {
	l := list()
	for _, s := range ss {
		l.add(str(s))
	}
	return l
}

// labelMap returns a mapping of labels sorted by key.
func labelMap(labels map[string]string) *node {
	m := mapping()
	for _, k := range sortedKeys(labels) {
		m.set(k, str(labels[k]))
	}
	return m
}

// document is one YAML document: comment lines, then the body.
type document struct {
	comment []string
	body    *node
}

// writeDocuments writes docs as a multi-document YAML stream, each starting with "---".
func writeDocuments(w io.Writer, header []string, docs []document) error {
	var b bytes.Buffer
	writeComments(&b, "", header)
	for _, d := range docs {
		b.WriteString("---\n")
		writeComments(&b, "", d.comment)
		writeBlock(&b, d.body, 0)
	}
	_, err := w.Write(b.Bytes())
	return err
}

func writeComments(b *bytes.Buffer, indent string, lines []string) {
	for _, l := range lines {
		b.WriteString(indent)
		b.WriteString("#")
		if l = oneLine(l); l != "" {
			b.WriteString(" ")
			b.WriteString(l)
		}
		b.WriteString("\n")
	}
}

// writeBlock writes a mapping or a list in block style at the given indentation (in
// spaces). Empty collections are written in flow style by the caller of writeValue.
func writeBlock(b *bytes.Buffer, n *node, indent int) {
	pad := strings.Repeat(" ", indent)
	switch n.kind {
	case kindMap:
		for i, k := range n.keys {
			v := n.vals[i]
			writeComments(b, pad, v.comment)
			b.WriteString(pad)
			b.WriteString(scalar(k))
			b.WriteString(":")
			writeValue(b, v, indent+2)
		}
	case kindList:
		for _, it := range n.items {
			writeComments(b, pad, it.comment)
			b.WriteString(pad)
			b.WriteString("-")
			writeItem(b, it, indent+2)
		}
	}
}

// writeValue writes what follows "key:".
func writeValue(b *bytes.Buffer, v *node, indent int) {
	switch {
	case v.kind == kindMap && len(v.keys) == 0:
		b.WriteString(" {}\n")
	case v.kind == kindList && len(v.items) == 0:
		b.WriteString(" []\n")
	case v.kind == kindMap || v.kind == kindList:
		b.WriteString("\n")
		writeBlock(b, v, indent)
	default:
		b.WriteString(" ")
		b.WriteString(scalarOf(v))
		b.WriteString("\n")
	}
}

// writeItem writes what follows a list dash: a mapping starts on the dash's line.
func writeItem(b *bytes.Buffer, v *node, indent int) {
	switch {
	case v.kind == kindMap && len(v.keys) > 0:
		pad := strings.Repeat(" ", indent)
		for i, k := range v.keys {
			val := v.vals[i]
			if i == 0 {
				if len(val.comment) > 0 {
					// A comment cannot sit between the dash and the first key: write it
					// after the dash, on lines of its own, then the key.
					b.WriteString("\n")
					writeComments(b, pad, val.comment)
					b.WriteString(pad)
				} else {
					b.WriteString(" ")
				}
			} else {
				writeComments(b, pad, val.comment)
				b.WriteString(pad)
			}
			b.WriteString(scalar(k))
			b.WriteString(":")
			writeValue(b, val, indent+2)
		}
	default:
		writeValue(b, v, indent)
	}
}

func scalarOf(n *node) string {
	if n.kind == kindInt {
		return n.str
	}
	return scalar(n.str)
}

// scalar returns s as a YAML string scalar: plain when it cannot be read as anything but
// that string, else double-quoted, with every character YAML does not allow in a document
// escaped.
func scalar(s string) string {
	if plainSafe(s) {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s { // invalid UTF-8 reads as U+FFFD, which is written as such
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case yamlPrintable(r):
			b.WriteRune(r)
		case r <= 0xFFFF:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			fmt.Fprintf(&b, `\U%08X`, r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// yamlPrintable reports whether YAML 1.2 allows r in a document as it is (its
// c-printable set), leaving out U+FEFF, the byte order mark.
func yamlPrintable(r rune) bool {
	switch {
	case r >= 0x20 && r <= 0x7E, r == 0x85:
		return true
	case r >= 0xA0 && r <= 0xD7FF, r >= 0xE000 && r <= 0xFFFD && r != 0xFEFF:
		return true
	case r >= 0x10000 && r <= 0x10FFFF:
		return true
	}
	return false
}

// plainSafe reports whether s may be written as a plain scalar: it starts with a letter
// or '/',
// holds only letters, digits and . _ / - (no YAML indicator, no ": " or " #"), and is not
// a word that YAML 1.1 reads as a boolean or null.
func plainSafe(s string) bool {
	if s == "" {
		return false
	}
	if c := s[0]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '/') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '/', c == '-':
		default:
			return false
		}
	}
	switch strings.ToLower(s) {
	case "y", "yes", "n", "no", "true", "false", "on", "off", "null":
		return false
	}
	return true
}

// oneLine makes s safe inside a comment line: line breaks become spaces, and characters
// YAML does not allow are written as \uXXXX.
func oneLine(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			b.WriteByte(' ')
		case yamlPrintable(r):
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, `\u%04X`, r)
		}
	}
	return strings.TrimSpace(b.String())
}
