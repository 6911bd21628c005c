package evaluate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// RepoRoot returns the nearest folder at or above the working directory that holds go.mod:
// the root the evaluation programs resolve their default paths against.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// DatasetsRoot returns where the public datasets are: $MESHGUARD_DATASETS when set, else
// ../shared/datasets relative to the repository root (see DESIGN.md's datasets README). It
// does not check that the folder exists.
func DatasetsRoot() (string, error) {
	if base := os.Getenv("MESHGUARD_DATASETS"); base != "" {
		return base, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "..", "shared", "datasets"), nil
}

// DatasetDir returns the folder sub of the datasets (DatasetsRoot). It fails with a message
// saying where it looked when the folder is missing.
func DatasetDir(sub string) (string, error) {
	base, err := DatasetsRoot()
	if err != nil {
		return "", fmt.Errorf("datasets: %w", err)
	}
	dir := filepath.Join(base, sub)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("dataset %s not found at %s (set MESHGUARD_DATASETS to the datasets folder or pass --data): %w", sub, dir, err)
	}
	return dir, nil
}

// ResultsPath is bench/RESULTS.md in the repository.
func ResultsPath() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bench", "RESULTS.md"), nil
}

// RequireDatasetsEnv, set to 1, turns a missing dataset from a skipped test into a failed one.
// CI sets it (.ci/run), so every evaluation runs there; a fresh clone without ../shared skips.
const RequireDatasetsEnv = "MESHGUARD_REQUIRE_DATASETS"

// TB is the part of testing.TB that NeedDataset uses; testing.T and testing.B satisfy it.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// NeedDataset returns path (a dataset file or folder) when it exists. When it does not, the
// test is skipped with a message naming MESHGUARD_DATASETS, or failed when
// MESHGUARD_REQUIRE_DATASETS=1.
func NeedDataset(t TB, path string, err error) string {
	t.Helper()
	if err == nil {
		_, err = os.Stat(path)
	}
	if err == nil {
		return path
	}
	if os.Getenv(RequireDatasetsEnv) == "1" {
		t.Fatalf("dataset needed (%s=1): %v", RequireDatasetsEnv, err)
	}
	t.Skipf("dataset not found, skipping (set MESHGUARD_DATASETS to the datasets folder, or %s=1 to fail instead): %v", RequireDatasetsEnv, err)
	return ""
}
