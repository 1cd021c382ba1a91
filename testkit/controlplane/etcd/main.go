// Command etcd is the etcd server of the test control plane, built from the pinned
// go.etcd.io/etcd/server/v3 module: that module holds etcd's entry point but no main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
