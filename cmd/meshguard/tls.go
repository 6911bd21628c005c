package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshguard/meshguard/extproc/certs"
	"github.com/prometheus/client_golang/prometheus"
)

// tlsFlags are the TLS files of one listener. The ext_proc and admin listeners have a set
// each: Envoy authenticates with mesh certificates, operators and Prometheus with others.
type tlsFlags struct {
	cert, key, clientCA string
}

func (f tlsFlags) enabled() bool { return f.cert != "" }

// check reports flags that only make sense together.
func (f tlsFlags) check(prefix string) error {
	var errs []error
	if (f.cert == "") != (f.key == "") {
		errs = append(errs, fmt.Errorf("--%stls-cert and --%stls-key go together", prefix, prefix))
	}
	if f.clientCA != "" && f.cert == "" {
		errs = append(errs, fmt.Errorf("--%stls-client-ca needs --%stls-cert and --%stls-key", prefix, prefix, prefix))
	}
	return errors.Join(errs...)
}

// tlsMetrics count certificate reloads and expose the expiry of the certificates in use.
type tlsMetrics struct {
	reloads *prometheus.CounterVec
	reg     prometheus.Registerer
}

func newTLSMetrics(reg prometheus.Registerer) (*tlsMetrics, error) {
	m := &tlsMetrics{reg: reg, reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_tls_reloads_total",
		Help: "Attempts to put changed TLS files in use, by listener and result (ok, error: the previous certificate stays).",
	}, []string{"listener", "result"})}
	return m, reg.Register(m.reloads)
}

// onReload counts one attempt to put listener's changed TLS files in use.
func (m *tlsMetrics) onReload(listener string) func(error) {
	return func(err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.reloads.WithLabelValues(listener, result).Inc()
	}
}

// watch exposes the expiry of the certificate src serves on listener name.
func (m *tlsMetrics) watch(name string, src *certs.Source) error {
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "meshguard_tls_certificate_expiry_timestamp_seconds",
		Help:        "When the certificate a listener serves expires (Unix seconds).",
		ConstLabels: prometheus.Labels{"listener": name},
	}, func() float64 { return float64(src.Leaf().NotAfter.Unix()) })
	if err := m.reg.Register(expiry); err != nil {
		return err
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(name, r)
	}
	return nil
}

// source loads a listener's TLS files and polls them until ctx is done.
func (m *tlsMetrics) source(ctx context.Context, name string, f tlsFlags, auth tls.ClientAuthType, nextProtos []string,
	interval time.Duration, log *slog.Logger) (*certs.Source, error) {
	src, err := certs.New(certs.Config{
		Name: name, CertFile: f.cert, KeyFile: f.key, ClientCAFile: f.clientCA, ClientAuth: auth,
		NextProtos: nextProtos, Interval: interval, Logger: log,
		OnReload: m.onReload(name),
	})
	if err != nil {
		return nil, err
	}
	if err := m.watch(name, src); err != nil {
		return nil, err
	}
	go src.Run(ctx)
	log.Info("TLS", slog.String("listener", name), slog.String("subject", src.Leaf().Subject.String()),
		slog.Time("not_after", src.Leaf().NotAfter), slog.Bool("mutual", f.clientCA != ""))
	return src, nil
}
