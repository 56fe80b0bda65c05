// Command etcd is etcd's own server entry point, built at the exact etcd
// version k8s.io/kubernetes depends on (Debian's etcd-server 3.4 is older than
// the API server supports).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
