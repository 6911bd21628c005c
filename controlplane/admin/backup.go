package admin

import (
	"log/slog"
	"net/http"

	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/prometheus/client_golang/prometheus"
)

// BackupResult is the answer to POST /v1/backup.
type BackupResult struct {
	Path   string       `json:"path"`
	Report store.Report `json:"report"`
}

// backup serves POST /v1/backup: a consistent copy of the running store, as
// `meshguard store backup` cannot take one while serve holds the file. The request is
// audited first, so that the backup holds its own record.
func (h *Handler) backup(w http.ResponseWriter, r *http.Request) {
	if h.backupFn == nil {
		writeError(w, http.StatusServiceUnavailable, "backups are not configured")
		return
	}
	var req RevokeRequest // {"reason": "..."}
	if r.ContentLength != 0 && !decodeBody(w, r, &req, `{"reason":"..."}`) {
		return
	}
	id := IdentityFrom(r.Context())
	a := h.auditRecord(r, id, "backup", "", "", req.Reason)
	if h.apply(w, "", a, func() error { return nil }) != nil {
		return
	}
	path, rep, err := h.backupFn()
	if err != nil {
		h.log.Error("admin API: backup failed", slog.Any("error", err))
		writeError(w, http.StatusInternalServerError, "backup: "+err.Error())
		return
	}
	h.log.Info("backup written", slog.String("path", path), slog.Int("services", rep.Services), slog.String("by", id.Name))
	writeJSON(w, http.StatusOK, BackupResult{Path: path, Report: rep})
}

// StoreCollector exports the persister's state at scrape time:
// meshguard_store_failing_services, meshguard_store_pending_services,
// meshguard_store_pending_audit_records, meshguard_store_save_failures_in_row and
// meshguard_store_last_success_timestamp_seconds.
func StoreCollector(c Committer) prometheus.Collector { return storeCollector{c} }

type storeCollector struct{ c Committer }

var (
	failingDesc  = prometheus.NewDesc("meshguard_store_failing_services", "Services whose last save failed.", nil, nil)
	pendingDesc  = prometheus.NewDesc("meshguard_store_pending_services", "Services with changes not saved yet.", nil, nil)
	pendingAudit = prometheus.NewDesc("meshguard_store_pending_audit_records", "Audit records not saved yet.", nil, nil)
	inRowDesc    = prometheus.NewDesc("meshguard_store_save_failures_in_row", "Failed saves since the last that saved everything.", nil, nil)
	lastOKDesc   = prometheus.NewDesc("meshguard_store_last_success_timestamp_seconds", "When a save last saved everything (Unix seconds; 0: never).", nil, nil)
)

func (s storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{failingDesc, pendingDesc, pendingAudit, inRowDesc, lastOKDesc} {
		ch <- d
	}
}

func (s storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := s.c.Status()
	last := 0.0
	if !st.LastSuccess.IsZero() {
		last = float64(st.LastSuccess.UnixNano()) / 1e9
	}
	for _, m := range []struct {
		d *prometheus.Desc
		v float64
	}{{failingDesc, float64(len(st.Failing))}, {pendingDesc, float64(st.Pending)}, {pendingAudit, float64(st.PendingAudit)},
		{inRowDesc, float64(st.FailuresInRow)}, {lastOKDesc, last}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.GaugeValue, m.v)
	}
}
