package main

// The synthetic estate: five services with daily cycles, each with its destinations and the
// request shapes it sends them. Addresses come from the documentation ranges (RFC 5737) and
// 10/8 for in-cluster services; attackers use 192.0.2.0/24, which no service uses.

// size is a log-normal byte count: median × e^(sigma·N(0,1)); a zero median means no body.
type size struct {
	median, sigma float64
}

// shape is one kind of request a service sends a destination.
type shape struct {
	weight      float64
	method      string
	path        string // "{id}" is replaced by a number, "{word}" by a search word
	headers     []string
	contentType string
	req, resp   size
	status      int
	userAgent   string // default: the service's own
}

// dest is a destination a service uses.
type dest struct {
	host      string
	ips       []string
	ipWeights []float64 // nil: uniform
	port      int
	// rate is the mean requests per hour over a weekday, before the daily cycle.
	rate   float64
	shapes []shape
}

// batch is a weekly job: count requests to dest, one every 20 s, from hour on weekday.
type batch struct {
	weekday int // 0 is Sunday, as time.Weekday
	hour    float64
	count   int
	dest    dest
}

// service is one workload. Its traffic follows 1 + amplitude·cos(2π(h − peak)/24) over the
// day, times weekend on Saturdays and Sundays.
type service struct {
	name      string
	peak      float64
	amplitude float64
	weekend   float64
	dests     []dest
	// main is the destination attacks aim at (spoofed Host, new shape), low the one with
	// about 5 requests an hour (rate change), upload the one taking uploads (slow
	// exfiltration, -1 when none).
	main, low, upload int
	batch             *batch
}

var (
	jsonHeaders = []string{"accept", "authorization", "content-type", "user-agent", "x-request-id"}
	getHeaders  = []string{"accept", "authorization", "user-agent", "x-request-id"}
	meshHeaders = []string{"accept", "user-agent", "x-b3-traceid", "x-request-id"}
)

var paymentsIPs = []string{"198.51.100.10", "198.51.100.11"}

func mailDest(rate float64) dest {
	return dest{host: "api.mail.example", ips: []string{"198.51.100.40", "198.51.100.41"}, port: 443, rate: rate, shapes: []shape{
		{weight: 1, method: "POST", path: "/v3/mail/send", headers: jsonHeaders, contentType: "application/json", req: size{2500, 0.4}, resp: size{40, 0.1}, status: 202},
	}}
}

var estate = []service{
	{
		name: "shop/checkout", peak: 20, amplitude: 0.7, weekend: 1.2, main: 0, low: 3, upload: -1,
		dests: []dest{
			{host: "api.payments.example", ips: paymentsIPs, ipWeights: []float64{0.7, 0.3}, port: 443, rate: 15, shapes: []shape{
				{weight: 0.7, method: "POST", path: "/v1/charges", headers: jsonHeaders, contentType: "application/json", req: size{900, 0.3}, resp: size{1100, 0.2}, status: 200},
				{weight: 0.3, method: "GET", path: "/v1/charges/ch_{id}", headers: getHeaders, resp: size{1100, 0.2}, status: 200},
			}},
			{host: "fraud.risk.example", ips: []string{"203.0.113.20"}, port: 443, rate: 15, shapes: []shape{
				{weight: 1, method: "POST", path: "/v2/score", headers: jsonHeaders, contentType: "application/json", req: size{1500, 0.3}, resp: size{300, 0.2}, status: 200},
			}},
			{host: "orders.shop.svc.cluster.local", ips: []string{"10.12.0.15"}, port: 8080, rate: 20, shapes: []shape{
				{weight: 0.6, method: "POST", path: "/orders", headers: meshHeaders, contentType: "application/json", req: size{2000, 0.5}, resp: size{500, 0.2}, status: 201},
				{weight: 0.4, method: "GET", path: "/orders/{id}", headers: meshHeaders, resp: size{2500, 0.4}, status: 200},
			}},
			mailDest(5),
		},
	},
	{
		name: "shop/catalog", peak: 19, amplitude: 0.7, weekend: 1.3, main: 1, low: 2, upload: -1,
		dests: []dest{
			{host: "search.shop.svc.cluster.local", ips: []string{"10.12.0.30"}, port: 9200, rate: 25, shapes: []shape{
				{weight: 0.8, method: "GET", path: "/products/_search?q={word}", headers: meshHeaders, resp: size{8000, 0.8}, status: 200},
				{weight: 0.2, method: "POST", path: "/products/_search", headers: meshHeaders, contentType: "application/json", req: size{400, 0.3}, resp: size{12000, 0.8}, status: 200},
			}},
			{host: "images.cdn.example", ips: []string{"203.0.113.50", "203.0.113.51", "203.0.113.52", "203.0.113.53"}, ipWeights: []float64{0.4, 0.3, 0.2, 0.1}, port: 443, rate: 12, shapes: []shape{
				{weight: 1, method: "GET", path: "/img/{id}.jpg", headers: []string{"accept", "user-agent"}, resp: size{60000, 0.7}, status: 200},
			}},
			{host: "inventory.shop.svc.cluster.local", ips: []string{"10.12.0.31"}, port: 8080, rate: 5, shapes: []shape{
				{weight: 1, method: "GET", path: "/stock/{id}", headers: meshHeaders, resp: size{200, 0.2}, status: 200},
			}},
		},
	},
	{
		name: "billing/invoicer", peak: 11, amplitude: 0.8, weekend: 0.3, main: 1, low: 2, upload: 1,
		dests: []dest{
			{host: "api.payments.example", ips: paymentsIPs, ipWeights: []float64{0.7, 0.3}, port: 443, rate: 4, shapes: []shape{
				{weight: 0.5, method: "GET", path: "/v1/invoices/in_{id}", headers: getHeaders, resp: size{1500, 0.3}, status: 200},
				{weight: 0.5, method: "POST", path: "/v1/invoices", headers: jsonHeaders, contentType: "application/json", req: size{1200, 0.3}, resp: size{1500, 0.3}, status: 200},
			}},
			{host: "storage.blob.example", ips: []string{"203.0.113.80", "203.0.113.81"}, port: 443, rate: 3, shapes: []shape{
				{weight: 1, method: "PUT", path: "/invoices/{id}.pdf", headers: []string{"authorization", "content-length", "content-type", "user-agent"}, contentType: "application/pdf", req: size{50000, 0.4}, status: 201},
			}},
			mailDest(5),
		},
		batch: &batch{weekday: 0, hour: 2, count: 40, dest: dest{host: "reports.storage.example", ips: []string{"203.0.113.90"}, port: 443, shapes: []shape{
			{weight: 1, method: "PUT", path: "/reports/weekly/{id}.csv", headers: []string{"authorization", "content-length", "content-type", "user-agent"}, contentType: "text/csv", req: size{200000, 0.5}, status: 201},
		}}},
	},
	{
		name: "analytics/collector", peak: 14, amplitude: 0.3, weekend: 0.9, main: 0, low: 1, upload: 0,
		dests: []dest{
			{host: "ingest.metrics.example", ips: []string{"198.51.100.60", "198.51.100.61", "198.51.100.62"}, port: 443, rate: 20, shapes: []shape{
				{weight: 1, method: "POST", path: "/v1/batch", headers: []string{"content-encoding", "content-type", "user-agent", "x-api-key"}, contentType: "application/x-protobuf", req: size{10000, 0.5}, resp: size{2, 0}, status: 200},
			}},
			{host: "config.analytics.svc.cluster.local", ips: []string{"10.12.0.50"}, port: 8080, rate: 4, shapes: []shape{
				{weight: 1, method: "GET", path: "/config", headers: meshHeaders, resp: size{3000, 0.1}, status: 200},
			}},
		},
	},
	{
		name: "auth/login", peak: 9, amplitude: 0.6, weekend: 0.6, main: 0, low: 2, upload: -1,
		dests: []dest{
			{host: "idp.identity.example", ips: []string{"198.51.100.70"}, port: 443, rate: 10, shapes: []shape{
				{weight: 0.9, method: "POST", path: "/oauth2/token", headers: []string{"accept", "authorization", "content-type", "user-agent"}, contentType: "application/x-www-form-urlencoded", req: size{300, 0.2}, resp: size{1800, 0.1}, status: 200},
				{weight: 0.05, method: "GET", path: "/.well-known/openid-configuration", headers: []string{"accept", "user-agent"}, resp: size{1400, 0}, status: 200},
				{weight: 0.05, method: "GET", path: "/oauth2/keys", headers: []string{"accept", "user-agent"}, resp: size{2200, 0}, status: 200},
			}},
			{host: "users.auth.svc.cluster.local", ips: []string{"10.12.0.60"}, port: 8080, rate: 12, shapes: []shape{
				{weight: 1, method: "GET", path: "/users/{id}", headers: meshHeaders, resp: size{700, 0.3}, status: 200},
			}},
			{host: "sms.notify.example", ips: []string{"203.0.113.110"}, port: 443, rate: 4, shapes: []shape{
				{weight: 1, method: "POST", path: "/v1/messages", headers: jsonHeaders, contentType: "application/json", req: size{250, 0.2}, resp: size{150, 0.1}, status: 201},
			}},
		},
	},
}

var searchWords = []string{"shoes", "lamp", "desk", "chair", "kettle", "bag", "coat", "phone", "book", "mug"}
