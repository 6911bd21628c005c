package policy

import (
	"regexp"
	"strings"
)

// Path templates, as meshguard learns them, replace the variable parts of a path with
// placeholders: {id}, {uuid}, {hex}, {b64}, {email}, {date} and {long} (see
// flowmodel/shape). Each format matches paths differently, so each gets its own mapping.

// placeholderRegex maps each placeholder to the regular expression of what it stands for,
// as flowmodel/shape produces it. A placeholder never spans a '/'.
var placeholderRegex = map[string]string{
	"{id}":    `[0-9]+`,
	"{uuid}":  `[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}`,
	"{hex}":   `[0-9A-Fa-f]+`,
	"{b64}":   `[^/]+`, // base64, base64url, JWTs: letters, digits, + _ - = . and %-escapes
	"{email}": `[^/]+`, // local part and domain, @ possibly %40
	"{date}":  `[^/]+`, // dates and date-times in several spellings
	"{long}":  `[^/]+`, // any segment longer than the templater keeps
}

// placeholderRE finds placeholders in a template.
var placeholderRE = regexp.MustCompile(`\{(id|uuid|hex|b64|email|date|long)\}`)

// istioPath maps a path template to an AuthorizationPolicy path. Istio (1.22 and later)
// reads a path containing {*} or {**} as an Envoy URI template, in which {*} matches
// exactly one path segment and nothing else may share that segment. So every segment
// holding a placeholder becomes {*} whole ("/invoices/invoice-{id}.pdf" →
// "/invoices/{*}"), which is wider than the template within that one segment and never
// across segments. A segment holding '*', '{' or '}' as text becomes {*} as well, since a
// template may not contain them outside an operator (and without a template, a leading or
// trailing '*' would turn the path into a suffix or prefix match).
//
// widened reports whether literal text of a segment was dropped (beyond each placeholder
// matching any one segment, which is the mapping itself). ok is false for a
// path that is not absolute ("*" of OPTIONS *), which no AuthorizationPolicy path can
// express.
func istioPath(tmpl string) (path string, widened, ok bool) {
	if !strings.HasPrefix(tmpl, "/") {
		return "", false, false
	}
	segs := strings.Split(tmpl, "/")
	for i, s := range segs {
		if !strings.ContainsAny(s, "{}*") {
			continue
		}
		if m := placeholderRE.FindStringIndex(s); m == nil || m[0] != 0 || m[1] != len(s) {
			widened = true // text beside a placeholder, or braces and stars as text
		}
		segs[i] = "{*}"
	}
	return strings.Join(segs, "/"), widened, true
}

// ciliumPath maps a path template to the regular expression of a Cilium HTTP rule.
// Cilium hands the expression to Envoy as a RE2 match on the whole ":path" header, which
// includes the query string; so literal text is escaped, placeholders become the
// expressions above, and an optional query is allowed at the end (query keys are part of
// meshguard's shapes but not of the exported rules). Anchors make the whole-path match
// explicit to a reader. ok is false for a path that is not absolute.
func ciliumPath(tmpl string) (expr string, ok bool) {
	if !strings.HasPrefix(tmpl, "/") {
		return "", false
	}
	var b strings.Builder
	b.WriteString("^")
	last := 0
	for _, m := range placeholderRE.FindAllStringIndex(tmpl, -1) {
		b.WriteString(regexp.QuoteMeta(tmpl[last:m[0]]))
		b.WriteString(placeholderRegex[tmpl[m[0]:m[1]]])
		last = m[1]
	}
	b.WriteString(regexp.QuoteMeta(tmpl[last:]))
	b.WriteString(`(\?.*)?$`)
	return b.String(), true
}

// ciliumMethod maps a method to the regular expression of a Cilium HTTP rule: the method
// itself when it holds no regular-expression syntax (the usual case), else escaped and
// anchored.
func ciliumMethod(m string) string {
	if q := regexp.QuoteMeta(m); q != m {
		return "^" + q + "$"
	}
	return m
}
