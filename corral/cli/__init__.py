"""The `corral` command. It talks to Corral's API over HTTP only (through `corral.client`),
except `corral up`, which is the daemon itself."""
