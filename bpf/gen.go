package bpf

//go:generate go tool bpf2go -target bpfel -go-package bpf -type endpoint_info -type ipcache_key -type ipcache_value -type policy_key -type policy_value -type ct_key -type ct_entry -type verdict_event -type service_key -type service_value -type backend_key -type backend_value palisade src/palisade.c -- -I src/include
