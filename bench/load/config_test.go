package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr []string // substrings, all of which must appear
		check   func(t *testing.T, c Config)
	}{
		{
			name: "defaults",
			check: func(t *testing.T, c Config) {
				if !slices.Equal(c.Targets, []string{"null", "meshguard"}) || c.Timeout != 200*time.Millisecond || c.Conns != 4 ||
					c.Mix.Services != 100 || !c.Mix.Response || c.Mix.Body || c.ScanRSSBound != 64<<20 || c.ScanIPs != 1_000_000 {
					t.Fatalf("defaults: %+v", c)
				}
			},
		},
		{
			name: "everything set",
			args: []string{"--targets", "meshguard,null", "--server-cpus", "1", "--client-cpus", "0,2-3", "--scan-rss-bound", "1.5GiB",
				"--meshguard-arg", "--log-level=warn", "--meshguard-arg", "--foo", "--server-env", "GOMAXPROCS=2", "--body", "--open-rate", "5000"},
			check: func(t *testing.T, c Config) {
				if !slices.Equal(c.Targets, []string{"meshguard", "null"}) || !slices.Equal(c.ServerCPUs, []int{1}) ||
					!slices.Equal(c.ClientCPUs, []int{0, 2, 3}) || c.ScanRSSBound != 3<<29 ||
					!slices.Equal(c.MeshguardArgs, []string{"--log-level=warn", "--foo"}) || !slices.Equal(c.ServerEnv, []string{"GOMAXPROCS=2"}) ||
					!c.Mix.Body || c.OpenRate != 5000 {
					t.Fatalf("parsed: %+v", c)
				}
			},
		},
		{
			name: "every problem reported at once",
			args: []string{"--targets", "null,envoy", "--conns", "0", "--server-cpus", "3-1", "--scan-rss-bound", "lots",
				"--server-env", "NOEQUALS", "--new-dest-share", "2", "--transport", "quic", "--scan-ips", "5000000"},
			wantErr: []string{`unknown target "envoy"`, "--conns", "--server-cpus", "--scan-rss-bound", "NOEQUALS", "new destination share", "--transport", "--scan-ips"},
		},
		{
			name:    "meshguard alone needs an open-loop rate",
			args:    []string{"--targets", "meshguard"},
			wantErr: []string{"--open-rate is needed"},
		},
		{
			name:    "stray argument",
			args:    []string{"extra"},
			wantErr: []string{"unexpected arguments"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, io.Discard)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("accepted")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestCommandLineQuotes(t *testing.T) {
	got := commandLine([]string{"--targets", "null", "--meshguard-arg", "--x=a b", "--results", ""})
	want := `go run ./bench/load --targets null --meshguard-arg '--x=a b' --results ''`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestProcReadingsOfThisProcess(t *testing.T) {
	pid := os.Getpid()
	before, err := ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if after < before || after == 0 {
		t.Fatalf("CPU went from %v to %v after spinning", before, after)
	}
	if self := SelfCPU(); self < before-20*time.Millisecond {
		t.Fatalf("getrusage %v far below /proc %v", self, before)
	}
	m, err := ProcMem(pid)
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS < 1<<20 || m.Peak < m.RSS || m.Anon == 0 || m.Anon+m.File > m.RSS+m.RSS/10 {
		t.Fatalf("implausible memory %+v", m)
	}
	if MachineCPU() == 0 {
		t.Fatal("no machine CPU from /proc/stat")
	}
	if _, err := ProcMem(1 << 30); err == nil {
		t.Fatal("read memory of a process that cannot exist")
	}
}

func TestStartPinnedSetsTheChildsAffinity(t *testing.T) {
	for _, cpus := range [][]int{{0}, nil} {
		cmd := exec.Command("sleep", "5")
		if err := startPinned(cmd, cpus); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			t.Fatal(err)
		}
		var allowed string
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				allowed = strings.TrimSpace(v)
			}
		}
		want := fmt.Sprintf("0-%d", runtime.NumCPU()-1)
		if len(cpus) == 1 {
			want = "0"
		}
		if runtime.NumCPU() == 1 {
			want = "0"
		}
		if allowed != want {
			t.Fatalf("pinned to %v: child allowed on %q, want %q", cpus, allowed, want)
		}
	}
	// This process's own threads keep their affinity.
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	if set.Count() != runtime.NumCPU() {
		t.Fatalf("this thread is left on %d CPUs of %d", set.Count(), runtime.NumCPU())
	}
}
