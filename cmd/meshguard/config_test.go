package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runEnv runs the command line with env as the only MESHGUARD_* environment.
func runEnv(t *testing.T, vars map[string]string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, lookupEnv: func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}}
	root := newRootCommand(e)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// printed parses "config print" output into option → (value, source).
func printed(t *testing.T, out string) map[string][2]string {
	t.Helper()
	m := map[string][2]string{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kv, src, ok := strings.Cut(line, "  # ")
		k, v, ok2 := strings.Cut(strings.TrimSpace(kv), ": ")
		if !ok || !ok2 {
			t.Fatalf("config print line %q", line)
		}
		m[k] = [2]string{v, src}
	}
	return m
}

// TestConfigLayers: defaults < file < environment < flags, and "config print" says which
// layer each value came from.
func TestConfigLayers(t *testing.T) {
	file := writeFile(t, "meshguard.yaml", `# a comment
listen: unix:///run/meshguard/extproc.sock
max-services: 7
lameduck: 3s
resolve-hosts: true
block-reasons: [new_destination, burst]
data-dir: /from/file
`)
	vars := map[string]string{"MESHGUARD_MAX_SERVICES": "8", "MESHGUARD_DATA_DIR": "/from/env", "MESHGUARD_DATASETS": "not an option, ignored"}
	out, stderr, err := runEnv(t, vars, "config", "print", "--config", file, "--data-dir", "/from/flag")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	got := printed(t, out)
	for name, want := range map[string][2]string{
		"listen":        {`"unix:///run/meshguard/extproc.sock"`, "file " + file + ":2"},
		"max-services":  {"8", "env MESHGUARD_MAX_SERVICES"},
		"lameduck":      {`"3s"`, "file " + file + ":4"},
		"resolve-hosts": {"true", "file " + file + ":5"},
		"block-reasons": {`"new_destination,burst"`, "file " + file + ":6"},
		"data-dir":      {`"/from/flag"`, "flag"},
		"admin-listen":  {`"127.0.0.1:9002"`, "default"},
		"xds-listen":    {`"127.0.0.1:18000"`, "default"},
	} {
		if got[name] != want {
			t.Errorf("%s: got %q, want %q", name, got[name], want)
		}
	}
	// Every option is printed, once.
	var f serveFlags
	if opts := f.options(); len(got) != len(opts) {
		t.Errorf("config print shows %d options, the table has %d", len(got), len(opts))
	}

	// The printed configuration, read back as a file, is the same configuration.
	again, stderr, err := runEnv(t, nil, "config", "print", "--config", writeFile(t, "printed.yaml", out))
	if err != nil {
		t.Fatalf("reading back: %v\n%s", err, stderr)
	}
	for name, v := range printed(t, again) {
		if v[0] != got[name][0] {
			t.Errorf("%s read back as %s, printed %s", name, v[0], got[name][0])
		}
	}

	// $MESHGUARD_CONFIG names the file when --config does not.
	out, _, err = runEnv(t, map[string]string{"MESHGUARD_CONFIG": file}, "config", "print")
	if err != nil || printed(t, out)["max-services"] != [2]string{"7", "file " + file + ":3"} {
		t.Errorf("MESHGUARD_CONFIG: %v %q", err, printed(t, out)["max-services"])
	}
}

// TestConfigLayersAreWhatServeRuns checks the configuration serve builds, not only what
// "config print" shows.
func TestConfigLayersAreWhatServeRuns(t *testing.T) {
	file := writeFile(t, "c.yaml", "max-services: 7\nlameduck: 3s\nresolve-hosts: true\nfirst-message-timeout: 5s\n")
	var f serveFlags
	fs := newServeFlagSet(&f)
	if err := fs.Parse([]string{"--lameduck", "4s"}); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := resolveServe(fs, &f, file, func(k string) (string, bool) {
		return map[string]string{"MESHGUARD_RESOLVE_HOSTS": "false"}[k], k == "MESHGUARD_RESOLVE_HOSTS"
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.model.MaxServices != 7 || cfg.lameduck != 4*time.Second || cfg.resolveHosts || cfg.firstMessageTimeout != 5*time.Second {
		t.Fatalf("max-services %d, lameduck %v, resolve-hosts %v, first-message-timeout %v", cfg.model.MaxServices, cfg.lameduck, cfg.resolveHosts, cfg.firstMessageTimeout)
	}
	if cfg.adminTokenFile != filepath.Join("meshguard-data", "admin-token") {
		t.Errorf("admin token file %q, want <data-dir>/admin-token", cfg.adminTokenFile)
	}
}

// TestConfigErrorsNameKeyAndSource: an unknown key, a repeated key, a bad value in the file
// or the environment, and a value the checks refuse are all reported in one error, each
// with where it came from.
func TestConfigErrorsNameKeyAndSource(t *testing.T) {
	file := writeFile(t, "bad.yaml", `listen: 127.0.0.1:1
no-such-option: 1
max-services: many
listen: 127.0.0.1:2
lameduck: {a: b}
learn-window: -1h
`)
	vars := map[string]string{"MESHGUARD_DRAIN_TIMEOUT": "forever", "MESHGUARD_PPROF": "yes", "MESHGUARD_LOG_FORMAT": "xml", "MESHGUARD_AFTER_LEARNING": "learn"}
	_, _, err := runEnv(t, vars, "serve", "--config", file)
	if err == nil {
		t.Fatal("want an error")
	}
	if err := contains(err.Error(),
		file+`:2: unknown option "no-such-option"`,
		file+`:3: max-services "many": want an integer`,
		file+":4: listen is already set on line 1",
		file+":5: lameduck: want a plain value",
		`MESHGUARD_DRAIN_TIMEOUT: drain-timeout "forever": want a duration`,
		`MESHGUARD_PPROF: pprof "yes": want true or false`,
		"--learn-window must not be negative (file "+file+":6)",
		`--log-format "xml": valid formats are text, json (env MESHGUARD_LOG_FORMAT)`,
		"--after-learning mode must be monitor, enforce or quarantine, not learn (env MESHGUARD_AFTER_LEARNING)",
	); err != nil {
		t.Fatalf("%v in:\n%v", err, err)
	}
	for _, tc := range []struct{ name, content, want string }{
		{"not a map", "- listen\n", "want a map of option names to values"},
		{"not YAML", "listen: [\n", "bad.yaml"},
		{"no value", "listen:\n", "listen: no value"},
		{"nested config", "config: other.yaml\n", "cannot name another"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runEnv(t, nil, "config", "print", "--config", writeFile(t, "bad.yaml", tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, _, err := runEnv(t, nil, "serve", "--config", "/does/not/exist.yaml"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("missing file: %v", err)
	}
}

// TestListenersBeyondLoopbackNeedTLS: a listener beyond loopback without its TLS is
// refused unless --insecure-listen; loopback and unix sockets need nothing.
func TestListenersBeyondLoopbackNeedTLS(t *testing.T) {
	tlsFiles := func(prefix string) []string {
		return []string{"--" + prefix + "tls-cert", "c.pem", "--" + prefix + "tls-key", "k.pem"}
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for valid
	}{
		{"defaults", nil, ""},
		{"unix sockets", []string{"--listen", "unix:///run/x.sock", "--admin-listen", "unix:///run/a.sock", "--xds-listen", "unix:///run/xds.sock"}, ""},
		{"localhost", []string{"--listen", "localhost:9001", "--xds-listen", "[::1]:18000"}, ""},
		{"ext_proc on all interfaces", []string{"--listen", "0.0.0.0:9001"}, "--listen 0.0.0.0:9001 is not a loopback address: serve it with TLS (--tls-cert)"},
		{"ext_proc on an empty host", []string{"--listen", ":9001"}, "--listen :9001 is not a loopback address"},
		{"ext_proc with TLS", append([]string{"--listen", "0.0.0.0:9001"}, tlsFiles("")...), ""},
		{"ext_proc insecure", []string{"--listen", "0.0.0.0:9001", "--insecure-listen"}, ""},
		{"xds on all interfaces", []string{"--xds-listen", "0.0.0.0:18000"}, "--xds-listen 0.0.0.0:18000 is not a loopback address: serve it with TLS (--xds-tls-cert)"},
		{"xds with ext_proc's TLS only", append([]string{"--xds-listen", "10.0.0.1:18000"}, tlsFiles("")...), "--xds-tls-cert"},
		{"xds with mutual TLS", append([]string{"--xds-listen", "0.0.0.0:18000", "--xds-tls-client-ca", "ca.pem"}, tlsFiles("xds-")...), ""},
		// Server-only TLS proves nothing about the node that connects (controlplane/nodeauth).
		{"xds with server TLS only", append([]string{"--xds-listen", "0.0.0.0:18000"}, tlsFiles("xds-")...), "mutual TLS"},
		{"xds off", []string{"--xds-listen", "off"}, ""},
		{"admin with mTLS", append([]string{"--admin-listen", "0.0.0.0:9002", "--admin-tls-client-ca", "ca.pem"}, tlsFiles("admin-")...), ""},
		{"admin without TLS", []string{"--admin-listen", "0.0.0.0:9002", "--admin-tls-client-ca", "ca.pem"}, "--admin-tls-client-ca needs --admin-tls-cert"},
		{"admin insecure but unauthenticated", []string{"--admin-listen", "0.0.0.0:9002", "--insecure-listen"}, "--admin-allow-remote"},
		{"probe listener anywhere", []string{"--health-listen", "0.0.0.0:9003"}, ""},
		{"probe listener bad address", []string{"--health-listen", "nowhere"}, `--health-listen "nowhere"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServe(tc.args)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestNewOptionsChecked: the options of options.md have their defaults and refuse what
// would turn a protection off.
func TestNewOptionsChecked(t *testing.T) {
	cfg, err := parseServe(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.firstMessageTimeout != 2*time.Second || cfg.maxStreamsPerConnection != 1000 || cfg.maxMessageBytes != 1048576 ||
		cfg.maxServicesAction != "block" || cfg.backupInterval != time.Hour || cfg.maxBodyBytes != 8192 ||
		cfg.xds.trustDomain != "cluster.local" || cfg.insecureListen || cfg.healthListen != "" {
		t.Fatalf("defaults: %+v", cfg)
	}
	_, err = parseServe([]string{"--first-message-timeout", "0s", "--max-streams-per-connection", "0", "--max-message-bytes", "-1",
		"--max-services-action", "allow", "--backup-interval", "-1s", "--max-body-bytes", "-1", "--xds-trust-domain", "Cluster/Local",
		"--xds-tls-cert", "c.pem"})
	if err := contains(fmtErr(err), "--first-message-timeout must be positive", "--max-streams-per-connection must be positive",
		"--max-message-bytes must be positive", `--max-services-action: max-services action "allow"`, "--backup-interval must not be negative",
		"--max-body-bytes must not be negative", `--xds-trust-domain "Cluster/Local"`, "--xds-tls-cert and --xds-tls-key go together"); err != nil {
		t.Fatalf("%v in:\n%v", err, fmtErr(err))
	}
}

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestUsageErrors: a command-line mistake is one line and the way to help, and fails.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--no-such-flag"}, "unknown flag: --no-such-flag\nRun 'meshguard serve --help' for usage."},
		{[]string{"serve", "--max-services", "many"}, "invalid argument \"many\" for \"--max-services\" flag: strconv.ParseInt: parsing \"many\": invalid syntax\nRun 'meshguard serve --help' for usage."},
		{[]string{"serve", "extra"}, "serve takes no arguments, got [\"extra\"]\nRun 'meshguard serve --help' for usage."},
		{[]string{"nonsense"}, "unknown command \"nonsense\"\nRun 'meshguard --help' for usage."},
		{nil, "want a command, as serve or demo\nRun 'meshguard --help' for usage."},
		{[]string{"approve", "shop/checkout"}, "want SERVICE DESTINATION [SHAPE], got 1 arguments\nRun 'meshguard approve --help' for usage."},
		{[]string{"config"}, "want a subcommand: print\nRun 'meshguard config --help' for usage."},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, err := runEnv(t, nil, tc.args...)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %q, want %q", fmtErr(err), tc.want)
			}
			if stdout != "" || stderr != "" {
				t.Errorf("printed besides the error: %q %q", stdout, stderr)
			}
		})
	}
}

// TestBinaryUsage runs the built binary as a user would: a parse error is two lines on
// stderr and a non-zero exit; "help serve" shows serve's help; flags may follow arguments.
func TestBinaryUsage(t *testing.T) {
	bin := binary(t)
	out, err := exec.Command(bin, "serve", "--nope").CombinedOutput()
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("serve --nope: %v, want a non-zero exit", err)
	}
	if string(out) != "meshguard: unknown flag: --nope\nRun 'meshguard serve --help' for usage.\n" {
		t.Errorf("serve --nope printed:\n%s", out)
	}
	out, err = exec.Command(bin, "help", "serve").Output()
	if err != nil {
		t.Fatal(err)
	}
	var f serveFlags
	for _, o := range f.options() {
		if !strings.Contains(string(out), "--"+o.name+" ") {
			t.Errorf("help serve lacks --%s", o.name)
		}
	}
	events := writeFile(t, "events.jsonl", `{"time": "2026-01-02T00:00:00Z", "service": "a/b", "destination": {"ip": "203.0.113.7", "port": 443}}`+"\n")
	out, err = exec.Command(bin, "replay", events, "--default-mode", "enforce").Output()
	if err != nil || !strings.Contains(string(out), `"mode":"enforce","verdict":"block"`) {
		t.Errorf("replay FILE --default-mode enforce: %v\n%s", err, out)
	}
}
