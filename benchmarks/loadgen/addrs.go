package loadgen

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// SourceAddrs spreads outgoing connections over several loopback source
// addresses. One source IP can hold at most one connection per ephemeral
// port to a given server address (/proc/sys/net/ipv4/ip_local_port_range,
// ~28,000 by default); 127.0.0.0/8 is all loopback on Linux, so
// 127.0.0.2, 127.0.0.3, … each add another range without any setup.
type SourceAddrs struct {
	ips  []net.IP
	next atomic.Uint64
}

// MaxLoopbackSources is the most addresses NewSourceAddrs hands out
// (127.0.0.1 .. 127.0.0.250).
const MaxLoopbackSources = 250

// NewSourceAddrs returns n source addresses 127.0.0.1 .. 127.0.0.n. The
// target must be a loopback address too, or the kernel cannot route from
// them.
func NewSourceAddrs(n int) (*SourceAddrs, error) {
	if n < 1 || n > MaxLoopbackSources {
		return nil, fmt.Errorf("source addresses: %d, want 1..%d", n, MaxLoopbackSources)
	}
	s := &SourceAddrs{}
	for i := 1; i <= n; i++ {
		s.ips = append(s.ips, net.IPv4(127, 0, 0, byte(i)))
	}
	return s, nil
}

// Pick returns the next source address, round robin.
func (s *SourceAddrs) Pick() net.IP {
	i := s.next.Add(1) - 1
	return s.ips[i%uint64(len(s.ips))]
}

// Len is the number of addresses.
func (s *SourceAddrs) Len() int { return len(s.ips) }

// Dialer dials TCP from the next source address (port 0: the kernel picks
// an ephemeral port on that address). It fits client.Config.Dialer.
func (s *SourceAddrs) Dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: s.Pick()}, Control: noPortAtBind}
		return d.DialContext(ctx, network, addr)
	}
}

// noPortAtBind sets IP_BIND_ADDRESS_NO_PORT: the port is chosen at
// connect, from the 4-tuple, instead of at bind, where the kernel would
// look for a port free for every destination and run out far sooner.
func noPortAtBind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
