package xds

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meshguard/meshguard/controlplane/nodeauth"
	"github.com/meshguard/meshguard/extproc/nodeid"
	"github.com/meshguard/meshguard/flowmodel"
)

// Baselines is where the controller reads the services. *flowmodel.Model satisfies it.
// Services must be safe to call concurrently with the model's other methods; the
// controller does not modify the returned records.
type Baselines interface {
	Services() []flowmodel.ServiceRecord
}

// ServiceLookup is optionally implemented by Baselines (*flowmodel.Model does). When no
// gateway is connected, the controller then reads only the services of connected sidecars
// instead of every service.
type ServiceLookup interface {
	Service(name string) (flowmodel.ServiceRecord, bool)
}

// Node keys: all sidecars of a service share one snapshot, all gateways another.
const (
	keyGateway      = "gateway"
	keyUnidentified = "sidecar"
	keySidecarPfx   = "sidecar/"
)

// Stats are the controller's counters. They only grow, except Nodes and Version.
type Stats struct {
	// Nodes is the number of node keys in use (services with sidecars, gateways,
	// unidentified): a key lives while an ADS stream uses it.
	Nodes int
	// Version is the last snapshot version pushed.
	Version uint64
	// Builds counts the resources built (a poll that changes nothing a node reads builds
	// nothing); Pushes counts snapshots set; Nacks counts configuration Envoy rejected;
	// BuildErrors counts failed builds.
	Builds, Pushes, Nacks, BuildErrors uint64
	// Skips counts, by reason, services newly found not enforced at L4 as asked.
	Skips map[string]uint64
	// Refused counts ADS streams ended because their client could not speak as the node it
	// named (see WithAuthenticator), or because the node would have needed a new node key
	// while Config.MaxNodeKeys were in use.
	Refused uint64
}

// Controller keeps one snapshot per node key in go-control-plane's snapshot cache, rebuilt
// from the baselines every Config.PollInterval and whenever Notify is called or a new node
// key connects. A node key lives while at least one ADS stream uses it: when its last stream
// closes, the key and its snapshot are dropped. At Config.MaxNodeKeys keys in use, a stream
// that would need a new sidecar key is refused (ResourceExhausted), never served a snapshot
// of another key. Versions are decimal, strictly increasing across all keys, and start at
// Config.FirstVersion (by default the wall clock in nanoseconds), so they keep rising across
// restarts. A snapshot is set only when a node's resources change.
//
// With WithAuthenticator, every ADS request's node is authorised against the stream's client
// certificate before the snapshot it maps to is read; since snapshots are keyed by the
// node's service (or "gateway"), a node is served only what its own identity may see.
//
// Methods are safe for concurrent use; Run must be called once.
type Controller struct {
	gen    *Generator
	base   Baselines
	log    *slog.Logger
	cache  cache.SnapshotCache
	server serverv3.Server
	ctx    context.Context // ends the ADS streams when Run returns
	cancel context.CancelFunc
	wake   chan struct{}

	// mu guards nodes (the keys in use) and refs (the streams using each key). It is also
	// held while a dropped key's snapshot is cleared, so that a stream binding the key again
	// waits and then finds a fresh cache entry for its watches.
	mu      sync.Mutex
	nodes   map[string]nodeid.Identity
	refs    map[string]int
	capWarn time.Time           // when a refusal at MaxNodeKeys was last logged as a warning
	dropped map[string]struct{} // keys dropped since Run last cleared their snapshots

	// auth authorises every node claim on ADS; nil trusts them all.
	auth *nodeauth.Authenticator
	// streams holds, per open ADS stream (SotW and delta apart: their IDs are counted
	// separately), the peer, the node it was last authorised as and the key it uses.
	streamMu    sync.Mutex
	sotw, delta map[int64]*adsStream
	refused     atomic.Uint64

	// Owned by Run.
	seed     maphash.Seed
	digests  map[string]uint64 // input digest of each key's last build
	pushed   map[string]Resources
	reported map[string][]Skip

	builds, nacks, buildErrors atomic.Uint64
	// pushMu is held from setting a snapshot until it is counted, and by Stats: an Envoy
	// can receive a snapshot before SetSnapshot returns, and whoever asks for the stats
	// after that must see the push counted.
	pushMu sync.Mutex
	// Guarded by pushMu: version is the last version given to a snapshot (never given
	// twice, even when setting it failed); lastPushed the last one set, and pushes how many.
	version, lastPushed, pushes uint64
	skipMu                      sync.Mutex
	skips                       map[string]uint64
}

// Option changes how a Controller is built.
type Option func(*Controller)

// WithAuthenticator makes the controller authorise every node an ADS stream names (on
// every request, not only the first: a stream cannot switch to another node) against the
// stream's client certificate. A refused stream ends with PermissionDenied (Unauthenticated
// when its connection lacks the TLS a asks for) and is counted in Stats.Refused.
func WithAuthenticator(a *nodeauth.Authenticator) Option {
	return func(c *Controller) { c.auth = a }
}

// NewController checks cfg and returns a controller reading base. log may be nil.
func NewController(cfg Config, base Baselines, log *slog.Logger, opts ...Option) (*Controller, error) {
	gen, err := NewGenerator(cfg)
	if err != nil {
		return nil, fmt.Errorf("xds config: %w", err)
	}
	if base == nil {
		return nil, fmt.Errorf("xds controller: nil baselines")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Controller{
		gen:      gen,
		base:     base,
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		wake:     make(chan struct{}, 1),
		nodes:    map[string]nodeid.Identity{},
		refs:     map[string]int{},
		dropped:  map[string]struct{}{},
		seed:     maphash.MakeSeed(),
		digests:  map[string]uint64{},
		pushed:   map[string]Resources{},
		reported: map[string][]Skip{},
		skips:    map[string]uint64{},
		sotw:     map[int64]*adsStream{},
		delta:    map[int64]*adsStream{},
	}
	for _, o := range opts {
		o(c)
	}
	first := gen.cfg.FirstVersion
	if first == 0 {
		first = uint64(time.Now().UnixNano())
	}
	c.version = first - 1
	c.cache = cache.NewSnapshotCache(true, nodeHash{c}, cacheLogger{log})
	c.server = serverv3.NewServer(ctx, c.cache, c.callbacks())
	return c, nil
}

// Register registers the ADS service (SotW and delta) on s.
func (c *Controller) Register(s *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(s, c.server)
}

// Cache returns the snapshot cache (for inspection; the controller owns its snapshots).
func (c *Controller) Cache() cache.SnapshotCache { return c.cache }

// Generator returns the controller's generator.
func (c *Controller) Generator() *Generator { return c.gen }

// Notify asks for a rebuild now, e.g. after an operator changed a service's mode. It never
// blocks.
func (c *Controller) Notify() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run rebuilds and pushes snapshots until ctx ends, then ends the ADS streams. It returns
// nil on cancellation.
func (c *Controller) Run(ctx context.Context) error {
	defer c.cancel()
	t := time.NewTicker(c.gen.cfg.PollInterval)
	defer t.Stop()
	for {
		c.sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.wake:
		}
	}
}

// Stats returns the controller's counters.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	n := len(c.nodes)
	c.mu.Unlock()
	c.skipMu.Lock()
	skips := maps.Clone(c.skips)
	c.skipMu.Unlock()
	c.pushMu.Lock()
	v, pushes := c.lastPushed, c.pushes
	c.pushMu.Unlock()
	return Stats{
		Nodes: n, Version: v, Builds: c.builds.Load(), Pushes: pushes,
		Nacks: c.nacks.Load(), BuildErrors: c.buildErrors.Load(), Skips: skips, Refused: c.refused.Load(),
	}
}

// keyOf maps a node to its snapshot key and the identity the key is built for.
func keyOf(n *corev3.Node) (string, nodeid.Identity) {
	id := nodeid.Identify(n)
	switch {
	case id.Role == nodeid.RoleGateway:
		return keyGateway, id
	case id.Service != "":
		return keySidecarPfx + id.Service, id
	}
	return keyUnidentified, nodeid.Identity{Role: id.Role}
}

// capWarnEvery spaces the warnings of refusals at Config.MaxNodeKeys (each is counted; a
// client churning streams at the cap must not flood the log).
const capWarnEvery = time.Minute

// bind makes stream id of m use the key of node (nil: the stream's node), registering the
// key when it is new and waking Run for it. A new sidecar key while Config.MaxNodeKeys keys
// are in use is refused with ResourceExhausted and counted in Stats.Refused; the gateway and
// unidentified keys are never refused (there is one of each). go-control-plane calls the
// request callbacks, hence bind, before it reads the snapshot of the request's node.
func (c *Controller) bind(m map[int64]*adsStream, sid int64, node *corev3.Node) error {
	c.streamMu.Lock()
	st, ok := m[sid]
	var old string
	if ok {
		old = st.key
		if node == nil {
			node = st.node
		}
	}
	c.streamMu.Unlock()
	if !ok {
		return status.Error(codes.Internal, "unknown stream")
	}
	key, id := keyOf(node)
	if key == old {
		return nil
	}
	c.mu.Lock()
	_, known := c.nodes[key]
	if !known && len(c.nodes) >= c.gen.cfg.MaxNodeKeys && key != keyGateway && key != keyUnidentified {
		now := time.Now()
		warn := now.Sub(c.capWarn) >= capWarnEvery
		if warn {
			c.capWarn = now
		}
		c.mu.Unlock()
		c.refused.Add(1)
		if warn {
			c.log.Warn("xds: node keys at their cap: refusing streams of new services until a key frees",
				"max", c.gen.cfg.MaxNodeKeys, "service", id.Service, "node", node.GetId())
		} else {
			c.log.Debug("xds: node refused: node keys at their cap", "service", id.Service, "node", node.GetId())
		}
		return status.Errorf(codes.ResourceExhausted, "xds: %d node keys in use, no room for service %q", c.gen.cfg.MaxNodeKeys, id.Service)
	}
	if !known {
		c.nodes[key] = id
	}
	c.refs[key]++
	if old != "" {
		c.releaseLocked(old)
	}
	c.mu.Unlock()
	c.streamMu.Lock()
	st.key = key
	if node != nil {
		st.node = node
	}
	c.streamMu.Unlock()
	if !known {
		c.log.Info("xds: new node key", "key", key, "node", node.GetId())
		c.Notify()
	}
	return nil
}

// releaseLocked drops one stream's use of key; the last one drops the key, and Run then
// clears its snapshot. c.mu must be held.
func (c *Controller) releaseLocked(key string) {
	c.refs[key]--
	if c.refs[key] > 0 {
		return
	}
	delete(c.refs, key)
	delete(c.nodes, key)
	c.dropped[key] = struct{}{}
	c.Notify()
}

type nodeHash struct{ c *Controller }

func (h nodeHash) ID(n *corev3.Node) string {
	key, _ := keyOf(n)
	return key
}

// adsStream is what the controller knows of one open ADS stream.
type adsStream struct {
	peer nodeauth.Peer
	// err, when set, refuses every request (the connection failed authentication).
	err error
	// node is the node the stream last named (and was authorised as); nil before its first
	// request.
	node *corev3.Node
	// key is the node key the stream uses ("" before its first accepted request).
	key string
}

// openStream records the peer of a new stream. Authentication failures are recorded and
// returned at the stream's first request, so that go-control-plane ends the stream with them.
func (c *Controller) openStream(ctx context.Context, m map[int64]*adsStream, id int64) error {
	p, err := c.auth.Peer(ctx)
	c.streamMu.Lock()
	m[id] = &adsStream{peer: p, err: err}
	c.streamMu.Unlock()
	if err != nil {
		c.refused.Add(1)
		c.log.Warn("xds: stream refused", "error", err)
	}
	return err
}

// authorize checks the node of a request against its stream's peer. node may be nil on
// requests after the first (Envoy sets it only once): the stream's node is then kept.
func (c *Controller) authorize(m map[int64]*adsStream, id int64, node *corev3.Node) error {
	if c.auth == nil {
		return nil
	}
	c.streamMu.Lock()
	st, ok := m[id]
	var cur adsStream
	if ok {
		cur = *st
	}
	c.streamMu.Unlock()
	if !ok {
		return status.Error(codes.Internal, "unknown stream")
	}
	if cur.err != nil {
		return cur.err
	}
	if node == nil {
		node = cur.node
	}
	if cur.node != nil && proto.Equal(node, cur.node) {
		return nil
	}
	if _, err := c.auth.Authorize(cur.peer, node, ""); err != nil {
		c.refused.Add(1)
		c.log.Warn("xds: node refused", "node", node.GetId(), "peer", cur.peer.SPIFFEID, "error", err)
		return err
	}
	c.streamMu.Lock()
	st.node = node
	c.streamMu.Unlock()
	return nil
}

// closeStream forgets a stream and releases its node key.
func (c *Controller) closeStream(m map[int64]*adsStream, id int64) {
	c.streamMu.Lock()
	var key string
	if st, ok := m[id]; ok {
		key = st.key
	}
	delete(m, id)
	c.streamMu.Unlock()
	if key != "" {
		c.mu.Lock()
		c.releaseLocked(key)
		c.mu.Unlock()
	}
}

func (c *Controller) callbacks() serverv3.Callbacks {
	nack := func(node *corev3.Node, typeURL, version, msg string) {
		c.nacks.Add(1)
		c.log.Warn("xds: envoy rejected configuration", "node", node.GetId(), "type", typeURL, "version", version, "error", msg)
	}
	return serverv3.CallbackFuncs{
		// go-control-plane calls the request callbacks before it reads the snapshot the
		// request's node maps to (for SotW with the stream's node filled in; for delta
		// before, hence the fallback to the stream's node in authorize).
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return c.openStream(ctx, c.sotw, id)
		},
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return c.openStream(ctx, c.delta, id)
		},
		StreamClosedFunc:      func(id int64, _ *corev3.Node) { c.closeStream(c.sotw, id) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { c.closeStream(c.delta, id) },
		StreamRequestFunc: func(id int64, req *discoverygrpc.DiscoveryRequest) error {
			if err := c.authorize(c.sotw, id, req.GetNode()); err != nil {
				return err
			}
			if err := c.bind(c.sotw, id, req.GetNode()); err != nil {
				return err
			}
			if d := req.GetErrorDetail(); d != nil {
				nack(req.GetNode(), req.GetTypeUrl(), req.GetVersionInfo(), d.GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discoverygrpc.DeltaDiscoveryRequest) error {
			if err := c.authorize(c.delta, id, req.GetNode()); err != nil {
				return err
			}
			if err := c.bind(c.delta, id, req.GetNode()); err != nil {
				return err
			}
			if d := req.GetErrorDetail(); d != nil {
				nack(req.GetNode(), req.GetTypeUrl(), "", d.GetMessage())
			}
			return nil
		},
	}
}

// sync rebuilds every node key's resources and pushes those that changed.
func (c *Controller) sync(ctx context.Context) {
	// Drop first, then take the keys: a key dropped after this clone is still in c.dropped
	// at the next sync, after this one may have set its snapshot again. (Dropping after the
	// clone let this sync restore a snapshot the drop had just cleared, for good.)
	c.dropUnused()
	c.mu.Lock()
	nodes := maps.Clone(c.nodes)
	c.mu.Unlock()
	if len(nodes) == 0 {
		return
	}
	lookup, canLookup := c.base.(ServiceLookup)
	var all []flowmodel.ServiceRecord
	var byName map[string]int
	if _, gw := nodes[keyGateway]; gw || !canLookup {
		all = c.base.Services()
		byName = make(map[string]int, len(all))
		for i := range all {
			byName[all[i].Name] = i
		}
	}
	for _, key := range slices.Sorted(maps.Keys(nodes)) {
		id := nodes[key]
		var recs []flowmodel.ServiceRecord
		switch {
		case id.Role == nodeid.RoleGateway:
			recs = all
		case id.Service == "":
		case byName != nil:
			if i, ok := byName[id.Service]; ok {
				recs = all[i : i+1]
			}
		default:
			if r, ok := lookup.Service(id.Service); ok {
				recs = []flowmodel.ServiceRecord{r}
			}
		}
		c.syncKey(ctx, key, id, recs)
	}
}

// dropUnused clears the snapshot (and go-control-plane's record of the node) and forgets the
// state of every key dropped since the last sync, unless it is in use again (its next sync
// then rebuilds it if needed).
func (c *Controller) dropUnused() {
	c.mu.Lock()
	var gone []string
	for key := range c.dropped {
		if _, back := c.nodes[key]; !back {
			c.cache.ClearSnapshot(key)
			gone = append(gone, key)
		}
	}
	clear(c.dropped)
	c.mu.Unlock()
	for _, key := range gone {
		delete(c.digests, key)
		delete(c.pushed, key)
		delete(c.reported, key)
		c.log.Debug("xds: node key dropped", "key", key)
	}
}

func (c *Controller) syncKey(ctx context.Context, key string, id nodeid.Identity, recs []flowmodel.ServiceRecord) {
	// Most polls change nothing a node is told: skip the build then.
	digest := c.digest(recs)
	if d, ok := c.digests[key]; ok && d == digest {
		return
	}
	c.digests[key] = digest
	c.builds.Add(1)
	res, err := c.gen.Build(id, recs)
	if err != nil {
		c.buildErrors.Add(1)
		c.log.Error("xds: build failed", "key", key, "error", err)
		return
	}
	c.reportSkips(key, res.Skipped)
	prev, hadPrev := c.pushed[key]
	if hadPrev && sameResources(prev, res) {
		return
	}
	c.pushMu.Lock()
	defer c.pushMu.Unlock()
	c.version++
	version := strconv.FormatUint(c.version, 10)
	snap, err := cache.NewSnapshot(version, res.ByType())
	if err == nil {
		err = snap.Consistent()
	}
	if err == nil {
		err = c.cache.SetSnapshot(ctx, key, snap)
	}
	if err != nil {
		c.buildErrors.Add(1)
		delete(c.digests, key) // retry at the next poll
		c.log.Error("xds: set snapshot failed", "key", key, "version", version, "error", err)
		return
	}
	c.pushed[key] = res
	c.lastPushed = c.version
	c.pushes++
	c.log.Info("xds: snapshot pushed", "key", key, "version", version, "skipped", len(res.Skipped))
}

// digest hashes what Build reads of the records: names and modes, and the destinations or
// allow list only of the modes that compile them (a learning baseline changes constantly
// but compiles to nothing).
func (c *Controller) digest(recs []flowmodel.ServiceRecord) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	for i := range recs {
		r := &recs[i]
		h.WriteString(r.Name)
		h.WriteByte(0)
		h.WriteByte(byte(r.Mode))
		switch r.Mode {
		case flowmodel.ModeEnforce, flowmodel.ModeMonitor:
			for _, d := range r.Destinations {
				h.WriteString(d.Destination)
				h.WriteByte(0)
			}
		case flowmodel.ModeQuarantine:
			for _, a := range r.QuarantineAllow {
				h.WriteString(a)
				h.WriteByte(0)
			}
		}
		h.WriteByte(1)
	}
	return h.Sum64()
}

// reportSkips counts and logs the skips of a key that were not there at its last build.
func (c *Controller) reportSkips(key string, skips []Skip) {
	prev := c.reported[key]
	for _, s := range skips {
		if slices.Contains(prev, s) {
			continue
		}
		c.skipMu.Lock()
		c.skips[s.Reason]++
		c.skipMu.Unlock()
		c.log.Warn("xds: service not enforced at L4 as its mode asks", "key", key, "service", s.Service, "reason", s.Reason, "detail", s.Detail)
	}
	c.reported[key] = skips
}

func sameResources(a, b Resources) bool {
	return equalProtos(a.Listeners, b.Listeners) && equalProtos(a.Clusters, b.Clusters) && equalProtos(a.Routes, b.Routes)
}

func equalProtos[T proto.Message](a, b []T) bool {
	return slices.EqualFunc(a, b, func(x, y T) bool { return proto.Equal(x, y) })
}

// cacheLogger sends go-control-plane's logs to slog.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) logf(level slog.Level, format string, args ...any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, "xds cache: "+fmt.Sprintf(format, args...))
	}
}

func (l cacheLogger) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }
func (l cacheLogger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l cacheLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
