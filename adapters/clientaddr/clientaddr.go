// Package clientaddr says which address a request comes from when mdsync
// runs behind reverse proxies: the TCP peer, unless that peer is a trusted
// proxy, in which case the rightmost address of X-Forwarded-For that is
// not itself a trusted proxy (realclientip's rightmost-trusted-range
// strategy). Only the configured proxies are believed: a client that
// writes X-Forwarded-For itself, connecting directly, changes nothing.
//
// The gateway records the address as the device's remote address, and both
// the gateway and the REST API rate-limit password checks by it.
package clientaddr

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/realclientip/realclientip-go"
)

// MaxProxies bounds the trusted list.
const MaxProxies = 256

// Resolver picks a request's client address. The nil *Resolver trusts no
// proxy: it answers the TCP peer. Safe for concurrent use.
type Resolver struct {
	trusted []net.IPNet
	xff     realclientip.RightmostTrustedRangeStrategy
}

// Parse reads a comma-separated list of trusted proxies, each a CIDR
// range ("10.0.0.0/8") or an address ("127.0.0.1", a /32 or /128). An
// empty list returns nil (no proxy trusted).
func Parse(list string) (*Resolver, error) {
	var items []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			items = append(items, s)
		}
	}
	if len(items) == 0 {
		return nil, nil
	}
	if len(items) > MaxProxies {
		return nil, fmt.Errorf("clientaddr: %d trusted proxies, limit %d", len(items), MaxProxies)
	}
	nets, err := realclientip.AddressesAndRangesToIPNets(items...)
	if err != nil {
		return nil, fmt.Errorf("clientaddr: trusted proxies: %w", err)
	}
	xff, err := realclientip.NewRightmostTrustedRangeStrategy("X-Forwarded-For", nets)
	if err != nil {
		return nil, errors.Join(errors.New("clientaddr"), err)
	}
	return &Resolver{trusted: nets, xff: xff}, nil
}

// Addr returns r's client address: r.RemoteAddr (host:port) when the peer
// is not a trusted proxy or X-Forwarded-For names no untrusted address,
// else that address (no port: the proxy does not forward it).
func (rs *Resolver) Addr(r *http.Request) string {
	if rs == nil {
		return r.RemoteAddr
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	host, _ = realclientip.SplitHostZone(host)
	ip := net.ParseIP(host)
	if ip == nil || !contains(rs.trusted, ip) {
		return r.RemoteAddr
	}
	if a := rs.xff.ClientIP(r.Header, r.RemoteAddr); a != "" {
		return a
	}
	return r.RemoteAddr
}

func contains(nets []net.IPNet, ip net.IP) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
