//go:build tools

// Package testcluster only pins the Kubernetes components that
// scripts/testcluster.sh builds from the Go module proxy. Nothing here is
// compiled into PayFlow; the blank imports keep `go mod tidy` from dropping
// the requirements. Build with (scripts/testcluster.sh build does this):
//
//	go build -trimpath -ldflags='-s -w' -o BIN/ \
//	    k8s.io/kubernetes/cmd/kube-apiserver \
//	    k8s.io/kubernetes/cmd/kube-controller-manager \
//	    k8s.io/kubernetes/cmd/kube-scheduler \
//	    k8s.io/kubernetes/cmd/kubectl \
//	    sigs.k8s.io/kwok/cmd/kwok
package testcluster

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
