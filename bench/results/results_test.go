package results

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "RESULTS.md")
	if err := WriteSection(path, "a", "first a\n"); err != nil {
		t.Fatal(err)
	}
	if err := WriteSection(path, "b", "first b\n"); err != nil {
		t.Fatal(err)
	}
	if err := WriteSection(path, "a", "second a\n"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if strings.Contains(got, "first a") || !strings.Contains(got, "second a") || !strings.Contains(got, "first b") {
		t.Fatalf("unexpected file:\n%s", got)
	}
	if strings.Index(got, "second a") > strings.Index(got, "first b") {
		t.Fatalf("section a moved:\n%s", got)
	}
	if err := os.WriteFile(path, []byte("<!-- BEGIN a -->\nno end\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteSection(path, "a", "x\n"); err == nil {
		t.Fatal("broken markers: want error")
	}
}
