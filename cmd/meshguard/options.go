package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// option is one configuration value: its name (the flag without "--", the YAML key, and
// MESHGUARD_<NAME> in the environment), where it is stored, its default (of the stored
// type) and one line of help. The tables below are the only place an option is declared;
// the flags, the YAML keys, the environment, "config print" and the README's table all
// come from them.
type option struct {
	name string
	ptr  any // *string, *bool, *int, *int64, *float64 or *time.Duration
	def  any // of the type ptr points to
	help string
}

// register adds o to fs as a flag. A default of the wrong type is a programming error,
// caught by every test that builds a flag set.
func (o option) register(fs *pflag.FlagSet) {
	switch p := o.ptr.(type) {
	case *string:
		fs.StringVar(p, o.name, o.def.(string), o.help)
	case *bool:
		fs.BoolVar(p, o.name, o.def.(bool), o.help)
	case *int:
		fs.IntVar(p, o.name, o.def.(int), o.help)
	case *int64:
		fs.Int64Var(p, o.name, o.def.(int64), o.help)
	case *float64:
		fs.Float64Var(p, o.name, o.def.(float64), o.help)
	case *time.Duration:
		fs.DurationVar(p, o.name, o.def.(time.Duration), o.help)
	default:
		panic(fmt.Sprintf("option %s: unsupported type %T", o.name, o.ptr))
	}
}

func registerOptions(fs *pflag.FlagSet, opts []option) {
	for _, o := range opts {
		o.register(fs)
	}
}
