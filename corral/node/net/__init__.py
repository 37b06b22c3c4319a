"""The node's data plane: a network namespace with a bridge, taps, dnsmasq and (later) nftables."""
