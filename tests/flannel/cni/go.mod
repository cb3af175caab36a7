// Module cni pins the Flannel CNI plugin the testbed runs:
// containernetworking/plugins/plugins/meta/flannel at v0.9.1, the last
// release of it in that repository (it speaks CNI up to 0.4.0; kube-flannel's
// conflist says 0.3.1). Its delegates, bridge and host-local, come from the
// product module's v1.9.1. It lives apart from the product module because the
// two need different containernetworking/plugins versions.
// scripts/flannel-build builds from it.
module github.com/palisade-cni/palisade/tests/flannel/cni

go 1.26.0

tool github.com/containernetworking/plugins/plugins/meta/flannel

require (
	github.com/Microsoft/go-winio v0.4.11 // indirect
	github.com/Microsoft/hcsshim v0.8.6 // indirect
	github.com/buger/jsonparser v0.0.0-20180808090653-f4dd9f5a6b44 // indirect
	github.com/containernetworking/cni v0.8.1 // indirect
	github.com/containernetworking/plugins v0.9.1 // indirect
	github.com/sirupsen/logrus v1.0.6 // indirect
	golang.org/x/crypto v0.0.0-20200622213623-75b288015ac9 // indirect
	golang.org/x/sys v0.0.0-20201117170446-d9b008d0a637 // indirect
)
