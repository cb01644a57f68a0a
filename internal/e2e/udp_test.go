package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"tungate/internal/netnstest"
)

// udpExchange sends payload as one datagram to dst (host:port) with
// `socksify socat - UDP:dst` in ns, so through the SOCKS5 server of the
// dante client configuration conf (UDP ASSOCIATE), and returns the first
// datagram that comes back and socksify's log. user may be "".
//
// dig is not used here: BIND 9.18's dig sends its query with a call that
// dante's libdsocks does not intercept, so the query reaches the relay
// without the SOCKS5 UDP header (danted logs "SOCKS protocol error in socks
// udp packet of length 57" for it, tungate or not). socat's send() on a
// connected UDP socket is intercepted.
func udpExchange(t *testing.T, ns *netnstest.Namespace, conf, user, pass, dst string, payload []byte) ([]byte, string, error) {
	t.Helper()
	netnstest.RequireTool(t, "socksify")
	socat := netnstest.RequireTool(t, "socat")
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	cmd := ns.Command(ctxT(t, 20*time.Second), "socksify", socat, "-T", "5", "-", "UDP:"+dst)
	cmd.Env = append(os.Environ(), "SOCKS_CONF="+conf, "SOCKS_AUTOADD_LANROUTES=no")
	if user != "" {
		cmd.Env = append(cmd.Env, "SOCKS_USERNAME="+user, "SOCKS_PASSWORD="+pass)
	}
	cmd.Stdin = inR
	cmd.Stdout = outW
	p := ns.StartCmd(t, cmd)
	inR.Close()
	outW.Close()
	defer p.Stop()

	if _, err := inW.Write(payload); err != nil {
		return nil, p.Output(), fmt.Errorf("writing to socat: %w", err)
	}
	outR.SetReadDeadline(time.Now().Add(8 * time.Second))
	buf := make([]byte, 65536)
	n, err := outR.Read(buf)
	inW.Close()
	select {
	case <-p.Done():
	case <-time.After(3 * time.Second):
	}
	if err != nil {
		return nil, p.Output(), fmt.Errorf("no datagram back from %s through socksify socat: %w", dst, err)
	}
	return buf[:n], p.Output(), nil
}

// checkEcho sends a random datagram to the UDP echo of server through the
// SOCKS5 server of conf and checks that the same bytes come back.
func checkEcho(t *testing.T, log *daemonLog, ns *netnstest.Namespace, conf, user, pass, dst string) {
	t.Helper()
	payload := []byte("tungate-e2e-echo-" + randHex(200))
	got, clientLog, err := udpExchange(t, ns, conf, user, pass, dst, payload)
	if err != nil {
		log.Fatalf(t, "%v\n----- socksify log (tail) -----\n%s", err, lastLines(clientLog, 30))
	}
	if !bytes.Equal(got, payload) {
		log.Fatalf(t, "UDP echo through SOCKS5: sent %d bytes %q, got %d bytes %q", len(payload), payload, len(got), got)
	}
}

// checkDNS asks dnsmasq (server:53) for name's A record through the SOCKS5
// server of conf and checks that the answer is exactly want.
func checkDNS(t *testing.T, log *daemonLog, ns *netnstest.Namespace, conf, user, pass, name, want string) {
	t.Helper()
	id := uint16(time.Now().UnixNano())
	q := dnsQuery(t, id, name)
	resp, clientLog, err := udpExchange(t, ns, conf, user, pass, serverV4+":53", q)
	if err != nil {
		log.Fatalf(t, "%v\n----- socksify log (tail) -----\n%s", err, lastLines(clientLog, 30))
	}
	got, err := dnsAnswerA(resp, id)
	if err != nil {
		log.Fatalf(t, "DNS reply for %s through SOCKS5: %v", name, err)
	}
	if len(got) != 1 || got[0] != want {
		log.Fatalf(t, "DNS answer for %s through SOCKS5: got %v, want [%s]", name, got, want)
	}
}

func dnsQuery(t *testing.T, id uint16, name string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{
		Name:  dnsmessage.MustNewName(name + "."),
		Type:  dnsmessage.TypeA,
		Class: dnsmessage.ClassINET,
	}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// dnsAnswerA checks that msg answers query id with success and returns its
// A records.
func dnsAnswerA(msg []byte, id uint16) ([]string, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, fmt.Errorf("not a DNS message (%d bytes %q): %w", len(msg), msg, err)
	}
	if h.ID != id || !h.Response || h.RCode != dnsmessage.RCodeSuccess {
		return nil, fmt.Errorf("header %+v: want a successful response to id %d", h, id)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, err
	}
	var out []string
	for {
		ah, err := p.AnswerHeader()
		if err == dnsmessage.ErrSectionDone {
			break
		}
		if err != nil {
			return nil, err
		}
		if ah.Type != dnsmessage.TypeA {
			if err := p.SkipAnswer(); err != nil {
				return nil, err
			}
			continue
		}
		a, err := p.AResource()
		if err != nil {
			return nil, err
		}
		out = append(out, netip.AddrFrom4(a.A).String())
	}
	return out, nil
}

// danteLogHas reports whether danted's output since mark contains all of
// the strings.
func danteLogHas(p *netnstest.Process, mark int, all ...string) bool {
	out := p.OutputSince(mark)
	for _, s := range all {
		if !strings.Contains(out, s) {
			return false
		}
	}
	return true
}
