package clientaddr

import (
	"net/http"
	"testing"
)

func TestAddr(t *testing.T) {
	rs, err := Parse("10.0.0.0/8, 127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"direct client, no header", "203.0.113.7:5000", nil, "203.0.113.7:5000"},
		{"direct client forging the header", "203.0.113.7:5000", []string{"1.2.3.4"}, "203.0.113.7:5000"},
		{"trusted proxy", "127.0.0.1:4000", []string{"198.51.100.9"}, "198.51.100.9"},
		{"rightmost untrusted, proxies skipped", "10.1.2.3:4000", []string{"6.6.6.6, 198.51.100.9, 10.9.9.9"}, "198.51.100.9"},
		{"two header lines read as one list", "10.1.2.3:4000", []string{"6.6.6.6", "198.51.100.9"}, "198.51.100.9"},
		{"only proxies in the header", "10.1.2.3:4000", []string{"10.2.2.2"}, "10.1.2.3:4000"},
		{"trusted proxy, no header", "10.1.2.3:4000", nil, "10.1.2.3:4000"},
		{"garbage header", "10.1.2.3:4000", []string{"not an address"}, "10.1.2.3:4000"},
		{"ipv6 client", "127.0.0.1:4000", []string{"2001:db8::1"}, "2001:db8::1"},
	}
	for _, c := range cases {
		r := &http.Request{RemoteAddr: c.peer, Header: http.Header{}}
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := rs.Addr(r); got != c.want {
			t.Errorf("%s: Addr = %q, want %q", c.name, got, c.want)
		}
	}
	var none *Resolver
	r := &http.Request{RemoteAddr: "127.0.0.1:1", Header: http.Header{"X-Forwarded-For": {"1.2.3.4"}}}
	if got := none.Addr(r); got != "127.0.0.1:1" {
		t.Errorf("nil resolver: %q", got)
	}
}

func TestParse(t *testing.T) {
	if rs, err := Parse(" , "); rs != nil || err != nil {
		t.Errorf("empty list: %v %v", rs, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
