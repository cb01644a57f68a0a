package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
)

// writeSocksConf writes a dante client configuration (for socksify) that
// sends everything, TCP and UDP, to the SOCKS5 server host:port offering
// method ("none" or "username").
func writeSocksConf(t *testing.T, host, port, method string) string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "socks.conf")
	writeFile(t, conf, fmt.Sprintf(`# dante client (socksify) for tungate's e2e tests
logoutput: stderr
debug: 1
resolveprotocol: fake
route {
	from: 0.0.0.0/0 to: 0.0.0.0/0 via: %s port = %s
	proxyprotocol: socks_v5
	command: connect udpassociate
	protocol: tcp udp
	method: %s
}
`, host, port, method))
	return conf
}

// writeProxychainsConf writes a proxychains4 configuration with one SOCKS5
// proxy (user and pass may be ""). proxyDNS makes proxychains send host
// names to the proxy.
func writeProxychainsConf(t *testing.T, host, port, user, pass string, proxyDNS bool) string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "proxychains.conf")
	dns := "# proxy_dns off"
	if proxyDNS {
		dns = "proxy_dns\nremote_dns_subnet 224"
	}
	writeFile(t, conf, fmt.Sprintf(`# proxychains4 for tungate's e2e tests
strict_chain
%s
tcp_read_time_out 15000
tcp_connect_time_out 8000
[ProxyList]
socks5 %s %s %s %s
`, dns, host, port, user, pass))
	return conf
}
