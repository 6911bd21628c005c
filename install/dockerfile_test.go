package install

import (
	"bufio"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// stage is one FROM ... block of a Dockerfile.
type stage struct {
	image, name string
	platform    string
	nodes       []*parser.Node
}

func parseDockerfile(t *testing.T) (args map[string]string, stages []stage) {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	args = map[string]string{}
	for _, n := range res.AST.Children {
		switch strings.ToLower(n.Value) {
		case "from":
			s := stage{image: n.Next.Value}
			if n.Next.Next != nil && strings.EqualFold(n.Next.Next.Value, "as") && n.Next.Next.Next != nil {
				s.name = n.Next.Next.Next.Value
			}
			for _, fl := range n.Flags {
				if p, ok := strings.CutPrefix(fl, "--platform="); ok {
					s.platform = p
				}
			}
			stages = append(stages, s)
		case "arg":
			if len(stages) == 0 {
				k, v, _ := strings.Cut(n.Next.Value, "=")
				args[k] = v
			}
			fallthrough
		default:
			if len(stages) > 0 {
				stages[len(stages)-1].nodes = append(stages[len(stages)-1].nodes, n)
			}
		}
	}
	return args, stages
}

// words returns the words of an instruction after its keyword.
func words(n *parser.Node) []string {
	var w []string
	for x := n.Next; x != nil; x = x.Next {
		w = append(w, x.Value)
	}
	return w
}

func TestDockerfile(t *testing.T) {
	args, stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// Build stage: the Go of go.mod, cross-compiled on the build platform, static.
	goVersion := goDirective(t)
	if want := "golang:${GO_VERSION}-bookworm"; build.image != want {
		t.Errorf("build image %q, want %q", build.image, want)
	}
	if v := args["GO_VERSION"]; !strings.HasPrefix(goVersion, v+".") && goVersion != v {
		t.Errorf("GO_VERSION %q does not match go.mod's go %s", v, goVersion)
	}
	if build.platform != "$BUILDPLATFORM" {
		t.Errorf("build stage platform %q, want $BUILDPLATFORM (cross-compile, no emulation)", build.platform)
	}
	var goBuild string
	for _, n := range build.nodes {
		if strings.EqualFold(n.Value, "run") && strings.Contains(n.Original, "go build") {
			goBuild = strings.Join(words(n), " ")
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "GOOS=$TARGETOS", "GOARCH=$TARGETARCH", "-trimpath", "-o /out/meshguard", "./cmd/meshguard"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("go build step %q lacks %q", goBuild, want)
		}
	}
	if _, err := os.Stat("../cmd/meshguard"); err == nil {
		if _, err := os.Stat("../cmd/meshguard/main.go"); err != nil {
			t.Errorf("the image builds ./cmd/meshguard, which has no main.go: %v", err)
		}
	} else {
		t.Log("cmd/meshguard is not in this tree yet; the build path is checked by name only")
	}

	// Runtime stage: distroless static, numeric non-root user, no shell steps.
	if final.image != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("runtime image %q, want gcr.io/distroless/static-debian12:nonroot", final.image)
	}
	var user string
	var entrypoint, cmd []string
	var copiedBinary, copiedConfig bool
	for _, n := range final.nodes {
		switch strings.ToLower(n.Value) {
		case "run":
			t.Errorf("RUN in the runtime stage (distroless has no shell): %s", n.Original)
		case "user":
			user = n.Next.Value
		case "entrypoint":
			if !n.Attributes["json"] {
				t.Errorf("ENTRYPOINT in shell form: %s", n.Original)
			}
			entrypoint = words(n)
		case "cmd":
			if !n.Attributes["json"] {
				t.Errorf("CMD in shell form: %s", n.Original)
			}
			cmd = words(n)
		case "copy":
			w := words(n)
			if slices.Contains(n.Flags, "--from="+build.name) && slices.Equal(w, []string{"/out/meshguard", "/meshguard"}) {
				copiedBinary = true
			}
			if len(n.Flags) == 0 && slices.Equal(w, []string{"install/image/config.yaml", configFile}) {
				copiedConfig = true
			}
		}
	}
	if !regexp.MustCompile(`^[0-9]+:[0-9]+$`).MatchString(user) || user != "65532:65532" {
		t.Errorf("USER %q, want the numeric 65532:65532 (runAsNonRoot can only check a number)", user)
	}
	if !copiedBinary {
		t.Errorf("runtime stage does not COPY --from=%s /out/meshguard /meshguard", build.name)
	}
	if !slices.Equal(entrypoint, []string{"/meshguard"}) {
		t.Errorf("ENTRYPOINT %q, want [/meshguard]", entrypoint)
	}
	if want := []string{"serve", "--config", configFile}; !slices.Equal(cmd, want) {
		t.Errorf("CMD %q, want %q", cmd, want)
	}
	if !copiedConfig {
		t.Errorf("runtime stage does not COPY install/image/config.yaml %s", configFile)
	}
	data, err := os.ReadFile("image/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(string(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.str("data-dir"); got != dataDir {
		t.Errorf("image config data-dir %q, want %q (the directory the image creates for 65532)", got, dataDir)
	}
}

// goDirective returns the go version of the module's go.mod.
func goDirective(t *testing.T) string {
	t.Helper()
	f, err := os.Open("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("go.mod has no go directive")
	return ""
}

func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	f, err := os.Open("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		ignored bool
	}{
		{path: "go.mod"},
		{path: "go.sum"},
		{path: "cmd/meshguard/main.go"},
		{path: "flowmodel/model.go"},
		{path: ".git/HEAD", ignored: true},
		{path: "flowmodel/model_test.go", ignored: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := pm.MatchesOrParentMatches(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.ignored {
				t.Errorf("ignored = %v, want %v", got, tt.ignored)
			}
		})
	}
}
