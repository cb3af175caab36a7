package bpf

//go:generate go tool bpf2go -target bpfel -go-package bpf -type endpoint_info -type ipcache_key -type ipcache_value -type policy_slot -type policy_key -type policy_value -type ct_key -type ct_entry -type verdict_event palisade src/palisade.c -- -I src/include
