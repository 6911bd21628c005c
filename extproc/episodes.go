package extproc

import (
	"log/slog"

	"github.com/meshguard/meshguard/flowmodel"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
)

// Span attributes of the parameter and episode of a verdict (DESIGN.md, "Span attributes").
const (
	// AttrKeyParameter names the parameter whose value raised parameter_value.
	AttrKeyParameter = attribute.Key("meshguard.parameter")
	// AttrKeyEpisodeID is the alert episode of an alert or block, AttrKeyEpisodeNew set when
	// the decision opened it.
	AttrKeyEpisodeID  = attribute.Key("meshguard.episode.id")
	AttrKeyEpisodeNew = attribute.Key("meshguard.episode.new")
)

// appendVerdictAttrs appends the parameter and episode attributes of v.
func appendVerdictAttrs(attrs []attribute.KeyValue, v flowmodel.Verdict) []attribute.KeyValue {
	if v.Param != "" {
		attrs = append(attrs, AttrKeyParameter.String(v.Param))
	}
	if v.Episode != 0 {
		attrs = append(attrs, AttrKeyEpisodeID.Int64(int64(v.Episode)), AttrKeyEpisodeNew.Bool(v.EpisodeNew))
	}
	return attrs
}

// appendVerdictLogAttrs appends the parameter (its name, never its value) and the episode of
// v to a decision log line.
func appendVerdictLogAttrs(attrs []slog.Attr, v flowmodel.Verdict) []slog.Attr {
	if v.Param != "" {
		attrs = append(attrs, slog.String("parameter", v.Param))
	}
	if v.Episode != 0 {
		attrs = append(attrs, slog.Uint64("episode", v.Episode), slog.Bool("episode_new", v.EpisodeNew))
	}
	return attrs
}

// registerEpisodes registers meshguard_alert_episodes_total{reason}.
func (m *Metrics) registerEpisodes(reg prometheus.Registerer) error {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_alert_episodes_total",
		Help: "Alert episodes opened, by the reason they are about: an alert storm is one episode.",
	}, []string{"reason"})
	if err := reg.Register(c); err != nil {
		return err
	}
	for _, r := range flowmodel.AllReasons() {
		m.episodes = append(m.episodes, c.WithLabelValues(r.String()))
	}
	return nil
}

// episodeOpened counts a verdict that opened an episode.
func (m *Metrics) episodeOpened(v flowmodel.Verdict) {
	if v.EpisodeNew && int(v.EpisodeKind) < len(m.episodes) {
		m.episodes[v.EpisodeKind].Inc()
	}
}
