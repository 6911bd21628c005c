package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	bencheval "github.com/meshguard/meshguard/bench/evaluate"
)

// server is the meshguard process under test.
type server struct {
	cmd     *exec.Cmd
	extproc string // host:port
	admin   string // http://host:port
	log     *os.File
	dataDir string // --data-dir, where serve writes its admin token
	exited  chan struct{}
	waitErr error
}

var servingLine = regexp.MustCompile(`serving ext_proc on (\S+), admin on (\S+),`)

// startServer starts `meshguard serve` on loopback ports with its data in dataDir and its
// output in logPath, and waits for the line saying where it serves.
func startServer(ctx context.Context, bin, dataDir, logPath string, extra []string) (*server, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "off", "--data-dir", dataDir,
		// Services stay in learn until the soak switches them to enforce.
		"--default-mode", "learn", "--learn-window", "87600h", "--learn-min-requests", "1000000000000",
		"--lameduck", "0"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the soak
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &server{cmd: cmd, log: logf, exited: make(chan struct{}), dataDir: dataDir}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	select {
	case line := <-lines:
		m := servingLine.FindStringSubmatch(line)
		if m == nil {
			s.kill()
			return nil, fmt.Errorf("meshguard said %q, not where it serves", line)
		}
		s.extproc, s.admin = m[1], "http://"+m[2]
		return s, nil
	case <-s.exited:
		logf.Close()
		return nil, fmt.Errorf("meshguard exited at start: %v (log: %s)", s.waitErr, logPath)
	case <-time.After(60 * time.Second):
		s.kill()
		return nil, fmt.Errorf("meshguard did not start within 60s (log: %s)", logPath)
	case <-ctx.Done():
		s.kill()
		return nil, ctx.Err()
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.exited
	s.log.Close()
}

// stop sends SIGTERM and waits; an unclean exit is an error.
func (s *server) stop(grace time.Duration) error {
	defer s.log.Close()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.exited:
		if s.waitErr != nil {
			return fmt.Errorf("meshguard exited with %v after SIGTERM", s.waitErr)
		}
		return nil
	case <-time.After(grace):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("meshguard did not exit within %v of SIGTERM", grace)
	}
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

// setMode switches a service's mode through the admin API.
func (s *server) setMode(ctx context.Context, service, mode string) error {
	body, _ := json.Marshal(map[string]string{"mode": mode})
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.admin+"/v1/services/"+url.PathEscape(service)+"/mode", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	token, err := os.ReadFile(filepath.Join(s.dataDir, "admin-token")) // written at serve's first start
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("set %s to %s: %s %s", service, mode, resp.Status, b)
	}
	return nil
}

// metrics reads unlabelled samples from /metrics.
func (s *server) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && want[f[0]] {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return nil, fmt.Errorf("/metrics %s: %w", f[0], err)
			}
			out[f[0]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("/metrics has no %s", n)
		}
	}
	return out, nil
}

// openFDs counts the open file descriptors of pid.
func openFDs(pid int) (int64, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return int64(len(ents)), nil
}

// rss reads VmRSS of pid, in bytes.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				return n << 10, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// buildMeshguard builds ./cmd/meshguard of the module holding the working directory.
func buildMeshguard(ctx context.Context, out string) error {
	root, err := bencheval.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/meshguard")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/meshguard: %v\n%s", err, b)
	}
	return nil
}

// loadAverage is the machine's 1-minute load average, from /proc/loadavg.
func loadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("/proc/loadavg is empty")
	}
	return strconv.ParseFloat(f[0], 64)
}
