package param_test

import (
	"fmt"

	"github.com/meshguard/meshguard/flowmodel/param"
)

func Example() {
	s, _ := param.New(param.Config{})
	scope := param.ScopeOf(0x1234, 0x5678) // e.g. destination hash, shape key
	for i := range 500 {
		s.Learn(scope, &param.Request{Query: fmt.Sprintf("/v1/orders?page=%d&sort=price", 1+i%20)})
	}
	fmt.Println(s.Judge(scope, &param.Request{Query: "/v1/orders?page=7&sort=price"}).Score)
	r := s.Judge(scope, &param.Request{Query: "/v1/orders?page=7%27%20OR%201%3D1--&sort=price"})
	fmt.Println(r.Score >= 0.5, r.Param, r.Broke)
	// Output:
	// 0
	// true page chars,length
}
