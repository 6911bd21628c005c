package extproc

import (
	"encoding/json"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/meshguard/meshguard/extproc/contract"
	"github.com/meshguard/meshguard/flowmodel"
	"go.opentelemetry.io/otel/trace"
)

// VerdictHeader is set on every response meshguard makes in Envoy's place.
const VerdictHeader = contract.VerdictHeader

// BlockDetails is the ImmediateResponse details string (Envoy's %RESPONSE_CODE_DETAILS%).
const BlockDetails = contract.BlockDetails

// UndecodableDetails is the details string of the 403 that answers a message that could not
// be decoded.
const UndecodableDetails = contract.UndecodableDetails

// BlockBody is the JSON body of a 403.
type BlockBody struct {
	Verdict string   `json:"verdict"`
	Reasons []string `json:"reasons"`
	TraceID string   `json:"trace_id"`
	// BudgetExceeded is set when the request was blocked because its decision overran the
	// decision budget, not because of a verdict.
	BudgetExceeded bool `json:"budget_exceeded,omitempty"`
}

func blockResponse(v flowmodel.Verdict, tid trace.TraceID) *extprocv3.ProcessingResponse {
	return forbidden(BlockBody{Verdict: v.Action.String(), Reasons: v.Reasons.Strings()}, tid, BlockDetails)
}

// budgetBlockResponse is the 403 sent when a decision overran its budget and the budget's
// answer is block. Its body has no reason codes: none was established.
func budgetBlockResponse(tid trace.TraceID) *extprocv3.ProcessingResponse {
	return forbidden(BlockBody{Verdict: flowmodel.Block.String(), Reasons: []string{}, BudgetExceeded: true}, tid, BudgetDetails)
}

// forbidden is the ImmediateResponse 403 with body (its trace id set from tid) and details.
func forbidden(body BlockBody, tid trace.TraceID, details string) *extprocv3.ProcessingResponse {
	if tid.IsValid() {
		body.TraceID = tid.String()
	}
	b, _ := json.Marshal(body) // cannot fail: strings and a bool
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: VerdictHeader, RawValue: []byte(body.Verdict)}},
				{Header: &corev3.HeaderValue{Key: "content-type", RawValue: []byte("application/json")}},
			}},
			Body:    b,
			Details: details,
		},
	}}
}
