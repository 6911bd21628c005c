package evaluate

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Row is one line of a results table: a name and what was measured under it.
type Row struct {
	Name   string
	Report *Report
	Kind   KindResult
}

// Table renders rows as a markdown table. Every row must share the first row's budgets.
func Table(rows []Row) string {
	var b strings.Builder
	if len(rows) == 0 {
		return ""
	}
	head := []string{"", "attack events (in learning)", "benign events", "service-days", "ROC-AUC", "AP"}
	for _, bu := range rows[0].Report.Budgets {
		head = append(head, "recall @ "+num(bu)+" FA/service-day")
	}
	head = append(head, "alert recall", "false alerts / service-day", "instances detected", "time to detect: median (max)")
	line(&b, head)
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = "---"
	}
	sep[0] = ":--"
	line(&b, sep)
	for _, r := range rows {
		k, rep := r.Kind, r.Report
		cells := []string{
			r.Name,
			fmt.Sprintf("%d (%d)", k.Positives, k.InLearning),
			fmt.Sprint(rep.Negatives),
			fmt.Sprintf("%.2f", rep.ServiceDays),
			fixed(k.AUC),
			fixed(k.AP),
		}
		for _, br := range k.Recall {
			cells = append(cells, fixed(br.Recall))
		}
		cells = append(cells,
			fixed(k.AlertRecall),
			fmt.Sprintf("%.2f (%d)", rep.FalseAlertsPerServiceDay(), rep.FalseAlerts),
			fmt.Sprintf("%d / %d", k.Detected, k.Instances),
			ttd(k),
		)
		line(&b, cells)
	}
	return b.String()
}

func line(b *strings.Builder, cells []string) {
	b.WriteString("| ")
	b.WriteString(strings.Join(cells, " | "))
	b.WriteString(" |\n")
}

func fixed(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", v)
}

func num(v float64) string { return fmt.Sprint(v) }

func ttd(k KindResult) string {
	med, ok := k.MedianTimeToDetect()
	if !ok {
		return "never"
	}
	mx, _ := k.MaxTimeToDetect()
	return Duration(med) + " (" + Duration(mx) + ")"
}

// Duration formats d for a table: seconds, minutes or hours.
func Duration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.0f s", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%.1f min", d.Minutes())
	default:
		return fmt.Sprintf("%.1f h", d.Hours())
	}
}

// ShortDuration writes 8h rather than 8h0m0s, for the learn windows in the sections' text.
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
