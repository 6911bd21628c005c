package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServerSpec says how to start one server under test as a child process.
type ServerSpec struct {
	Name    string   // "null" or "meshguard"
	Bin     string   // the binary
	Args    []string // its arguments
	Env     []string // KEY=VALUE added to this process's environment
	Target  string   // the ext_proc gRPC target the client dials (host:port or unix:///path)
	Admin   string   // admin HTTP base URL, empty when the server has none
	CPUs    []int    // CPU affinity; empty inherits this process's
	LogPath string   // stdout and stderr go here

	pprofBase string // net/http/pprof base URL when it is not the admin address
}

// Server is a running server under test.
type Server struct {
	Spec    ServerSpec
	PID     int
	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
	waitErr error
}

// readyTimeout bounds how long a server may take to report SERVING.
const readyTimeout = 60 * time.Second

// StartServer starts spec's process and waits until its grpc.health.v1 reports SERVING (and,
// when it has an admin address, until /readyz answers 200).
func StartServer(ctx context.Context, spec ServerSpec) (*Server, error) {
	logf, err := os.Create(spec.LogPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	cmd := exec.Command(spec.Bin, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive us
	if err := startPinned(cmd, spec.CPUs); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", spec.Name, spec.Bin, err)
	}
	s := &Server{Spec: spec, PID: cmd.Process.Pid, cmd: cmd, log: logf, exited: make(chan struct{})}
	go func() { s.waitErr = cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, fmt.Errorf("start %s: %w (log: %s)", spec.Name, err, spec.LogPath)
	}
	return s, nil
}

// startPinned starts cmd with CPU affinity cpus. A child inherits the affinity of the thread
// that forks it, so the fork happens on a locked OS thread whose affinity is set for the
// moment and restored after. (The thread must live on: Pdeathsig fires when the forking thread
// exits.)
func startPinned(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get CPU affinity: %w", err)
			return
		}
		for _, c := range cpus {
			set.Set(c)
		}
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("set CPU affinity %v: %w", cpus, err)
			return
		}
		err := cmd.Start()
		if rerr := unix.SchedSetaffinity(0, &old); rerr != nil {
			// Leave the thread locked: the runtime then ends it rather than reuse a pinned thread.
			errc <- errors.Join(err, fmt.Errorf("restore CPU affinity: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	cc, err := grpc.NewClient(s.Spec.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	var last error
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("exited before it was ready: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v: %w", readyTimeout, errors.Join(ctx.Err(), last))
		case <-time.After(50 * time.Millisecond):
		}
		last = healthy(ctx, hc)
		if last == nil && s.Spec.Admin != "" {
			last = getOK(ctx, s.Spec.Admin+"/readyz")
		}
		if last == nil {
			return nil
		}
	}
}

func healthy(ctx context.Context, hc healthpb.HealthClient) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", resp.GetStatus())
	}
	return nil
}

func getOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// stopGrace is how long a server gets to exit after SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// Stop sends SIGTERM, waits up to stopGrace, then kills the process.
func (s *Server) Stop() error {
	defer s.log.Close()
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", s.Spec.Name, err)
	}
	select {
	case <-s.exited:
		return nil
	case <-time.After(stopGrace):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("stop %s: killed after %v without exiting", s.Spec.Name, stopGrace)
	}
}

// Alive reports whether the process is still running.
func (s *Server) Alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// buildBinary runs `go build -o out pkg` in the module at root.
func buildBinary(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}
