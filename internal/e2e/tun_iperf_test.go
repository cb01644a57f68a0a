package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"tungate/internal/netnstest"
)

// iperfJSON is the part of `iperf3 -J` output the tests read.
type iperfJSON struct {
	Start struct {
		Connected []struct {
			LocalHost  string `json:"local_host"`
			LocalPort  int    `json:"local_port"`
			RemoteHost string `json:"remote_host"`
			RemotePort int    `json:"remote_port"`
		} `json:"connected"`
	} `json:"start"`
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		Sum         iperfSum `json:"sum"` // UDP
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int64   `json:"retransmits"`
	JitterMs      float64 `json:"jitter_ms"`
	LostPackets   int64   `json:"lost_packets"`
	Packets       int64   `json:"packets"`
	LostPercent   float64 `json:"lost_percent"`
}

// iperfMode is one iperf3 run: TCP client to server, TCP reverse (-R), or
// UDP at a rate.
type iperfMode struct {
	name string
	args []string
	udp  bool
	rev  bool
}

// The runs move fixed amounts (-n) rather than run for a time, so that
// what is in flight when a run ends (socket buffers on both sides of
// tungate: a few MiB, tens through dante) is small beside the whole. The
// iperf3 server closes its data socket at the end with that tail unread,
// so the registry lies between the receiver's count and the sender's (see
// iperfTun). For -R the client reads all of the 128 MiB, so both
// ends agree exactly. UDP runs at 200 Mbit/s for 2 s.
var iperfModes = []iperfMode{
	{name: "TCP", args: []string{"-n", "512M"}},
	{name: "TCP -R", args: []string{"-R", "-n", "128M"}, rev: true},
	{name: "UDP 200M", args: []string{"-u", "-b", "200M", "-t", "2"}, udp: true},
	{name: "UDP 200M -R", args: []string{"-u", "-b", "200M", "-t", "2", "-R"}, udp: true, rev: true},
}

// maxUDPLoss is the loss a UDP run may have at 200 Mbit/s: far above what
// a working path loses here (well under 1%), far below what a path loses
// that drops or corrupts datagrams (a receiver drops those whose checksum
// is wrong).
const maxUDPLoss = 5.0

// iperfTun runs iperf3 -J in ns against server's iperf3 through the TUN
// (no proxy option: the routes carry it), then compares its byte counts
// with the registry's for the data connection, read from the daemon's
// "flow closed" line (the stream's local port is in iperf3's start.connected;
// the control connection has another port). It returns the registry's
// bytes over iperf3's sender bytes.
func (tw *tunWorld) iperfTun(t *testing.T, log *daemonLog, d *netnstest.Process, ns *netnstest.Namespace, host string, m iperfMode) float64 {
	t.Helper()
	mark := d.Mark()
	tunBefore := tunStats(t, tw.gw)
	udpBefore := udpStats(t, tw.server)
	gwBefore := netStats(t, tw.gw, "netstat", "TcpExt:")
	args := append([]string{"-c", host, "-p", iperfPort, "-J", "--connect-timeout", "5000"}, m.args...)
	r := ns.Exec(ctxT(t, 30*time.Second), "iperf3", args...)
	var res iperfJSON
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		log.Fatalf(t, "iperf3 %s: output is not JSON (%v): %s", strings.Join(args, " "), err, r)
	}
	if r.Err != nil || res.Error != "" {
		log.Fatalf(t, "iperf3 %s: error %q: %s", strings.Join(args, " "), res.Error, r)
	}
	if len(res.Start.Connected) != 1 {
		log.Fatalf(t, "iperf3 %s: %d streams, want 1", strings.Join(args, " "), len(res.Start.Connected))
	}
	port := res.Start.Connected[0].LocalPort
	tunAfter := tunStats(t, tw.gw)
	udpAfter := udpStats(t, tw.server)
	gwAfter := netStats(t, tw.gw, "netstat", "TcpExt:")
	var drops []string
	for _, k := range []string{"TCPRcvQDrop", "PruneCalled", "RcvPruned", "TCPBacklogDrop", "TCPOFODrop", "TCPOFOQueue", "TCPZeroWindowDrop", "TCPLossProbes", "TCPSACKReorder"} {
		if d := gwAfter[k] - gwBefore[k]; d != 0 {
			drops = append(drops, fmt.Sprintf("%s %d", k, d))
		}
	}
	if len(drops) > 0 {
		t.Logf("gw's TCP counters during the run (TcpExt): %s", strings.Join(drops, ", "))
	}
	t.Logf("%s during the run: into tungate (tx) %d packets, %d dropped; from tungate (rx) %d packets, %d dropped",
		tunDevice, tunAfter.tx.Packets-tunBefore.tx.Packets, tunAfter.tx.Dropped-tunBefore.tx.Dropped,
		tunAfter.rx.Packets-tunBefore.rx.Packets, tunAfter.rx.Dropped-tunBefore.rx.Dropped)
	if m.udp {
		t.Logf("server's UDP during the run: %d datagrams in, %d receive-buffer errors",
			udpAfter["InDatagrams"]-udpBefore["InDatagrams"], udpAfter["RcvbufErrors"]-udpBefore["RcvbufErrors"])
	}
	sent, recv := res.End.SumSent, res.End.SumReceived
	if m.udp {
		t.Logf("%s: iperf3 %s: sent %d bytes (%.1f Mbit/s, %d packets), received %d bytes (%.1f Mbit/s), lost %d of %d (%.2f%%), jitter %.3f ms",
			ns.Short, strings.Join(args, " "), sent.Bytes, sent.BitsPerSecond/1e6, sent.Packets, recv.Bytes, recv.BitsPerSecond/1e6,
			res.End.Sum.LostPackets, res.End.Sum.Packets, res.End.Sum.LostPercent, res.End.Sum.JitterMs)
	} else {
		t.Logf("%s: iperf3 %s: sent %d bytes (%.1f Mbit/s, %d retransmits), received %d bytes (%.1f Mbit/s)",
			ns.Short, strings.Join(args, " "), sent.Bytes, sent.BitsPerSecond/1e6, sent.Retransmits, recv.Bytes, recv.BitsPerSecond/1e6)
	}
	if sent.Bytes <= 0 || recv.Bytes <= 0 {
		log.Fatalf(t, "iperf3 moved no data: %s", r.Stdout)
	}

	proto := "tcp"
	wait := 10 * time.Second
	if m.udp {
		// A UDP mapping closes when idle (--udp-timeout).
		proto = "udp"
		wait = 15 * time.Second
	}
	dst := netip.MustParseAddrPort(net.JoinHostPort(host, iperfPort))
	flows := waitFlows(d, mark, 1, wait, func(f flowClosed) bool {
		return f.Proto == proto && f.Src.Port() == uint16(port) && f.Dst == dst
	})
	if len(flows) != 1 {
		log.Fatalf(t, "want one \"flow closed\" line for the iperf3 data %s flow from port %d to %s, got %d", proto, port, dst, len(flows))
	}
	f := flows[0]
	t.Logf("registry: %s", f.Line[strings.Index(f.Line, "flow="):])
	if !tunSrc(f.Src) && !strings.HasPrefix(f.Src.Addr().String(), "198.18.10.") && !strings.HasPrefix(f.Src.Addr().String(), "2001:db8:10:") {
		log.Errorf(t, "the data flow's source %s is not the TUN's or lan's address", f.Src)
	}

	// The registry counts payload bytes relayed. iperf3 counts the bytes
	// of its test data: for TCP the stream also carries the 37-byte
	// cookie first (client to server), for UDP the 4-byte connect
	// message each way.
	// The registry counts payload bytes relayed. iperf3 counts its test
	// data: for TCP the stream carries a 37-byte cookie first (client to
	// server), for UDP a 4-byte connect message each way.
	const tcpCookie = 37
	reg, other, what := f.Up, f.Down, "up (client to server)"
	if m.rev {
		reg, other, what = f.Down, f.Up, "down (server to client)"
	}
	rSent := float64(reg) / float64(sent.Bytes)
	rRecv := float64(reg) / float64(recv.Bytes)
	t.Logf("RESULT %s: registry %s = %d bytes (%d the other way); iperf3 sent %d, received %d; registry/sent = %.5f, registry/received = %.5f",
		m.name, what, reg, other, sent.Bytes, recv.Bytes, rSent, rRecv)
	switch {
	case m.udp:
		// Datagrams lost before the netstack (the TUN queue, the
		// mapping's queue) are not relayed, those lost after it were: the
		// count lies between what the server received and what the client
		// sent, and is within 1% of what was sent when less than 1% was
		// lost.
		if reg < recv.Bytes || reg > sent.Bytes+4 {
			log.Errorf(t, "UDP: registry %s %d is not between iperf3's received %d and sent %d (+4)", what, reg, recv.Bytes, sent.Bytes)
		}
		if res.End.Sum.LostPercent < 1 && math.Abs(rSent-1) > 0.01 {
			log.Errorf(t, "UDP: registry %s %d differs from iperf3's sent %d by more than 1%% (ratio %.5f) with %.2f%% loss", what, reg, sent.Bytes, rSent, res.End.Sum.LostPercent)
		}
		if res.End.Sum.LostPercent > maxUDPLoss {
			log.Errorf(t, "UDP: %.2f%% lost, more than %.0f%%", res.End.Sum.LostPercent, maxUDPLoss)
		}
		if res.End.Sum.LostPercent >= 1 {
			t.Logf("UDP: %.2f%% lost: %d bytes before the registry counted them (sent - registry, less the connect message), %d after (registry - received)",
				res.End.Sum.LostPercent, sent.Bytes-(reg-4), reg-4-recv.Bytes)
		}
	case m.rev:
		// -n: both ends moved exactly the same bytes.
		if math.Abs(rSent-1) > 0.01 || math.Abs(rRecv-1) > 0.01 {
			log.Errorf(t, "TCP -R: registry down %d is not within 1%% of iperf3's sent %d and received %d", reg, sent.Bytes, recv.Bytes)
		}
	default:
		// The registry counts at tungate, which lies between the two ends:
		// what was in flight before tungate when the server stopped is in
		// the client's count only, what was in flight after it is in the
		// registry's but not the server's. So the count is between the
		// two; and what is missing at tungate can be no more than the
		// netstack holds (its TCP receive buffer, at most 8 MiB, and a
		// relay buffer of at most 8 x 256 KiB), and what it has beyond the
		// server's count no more than the socket buffers after it (a few
		// MiB per hop; 64 MiB is far beyond any).
		r := reg - tcpCookie
		if r < recv.Bytes || r > sent.Bytes {
			log.Errorf(t, "TCP: registry up %d (less the %d-byte cookie) is not between what the iperf3 server received (%d) and what the client sent (%d)", r, tcpCookie, recv.Bytes, sent.Bytes)
		}
		const maxBefore, maxAfter = 8<<20 + 2<<20, 64 << 20
		if before, after := sent.Bytes-r, r-recv.Bytes; before > maxBefore || after > maxAfter {
			log.Errorf(t, "TCP: registry up %d (less the cookie): %d bytes short of what iperf3 sent (%d; at most %d can be held before tungate), %d beyond what it received (%d; at most %d)", r, before, sent.Bytes, maxBefore, after, recv.Bytes, maxAfter)
		}
	}
	return rSent
}

type linkCounters struct {
	Packets int64 `json:"packets"`
	Dropped int64 `json:"dropped"`
}

type linkStats struct{ rx, tx linkCounters }

// tunStats returns the TUN device's packet counters in ns (zero when it
// is not there): tx is what the host sent into the device (tungate reads
// it), rx what tungate wrote.
func tunStats(t *testing.T, ns *netnstest.Namespace) linkStats {
	t.Helper()
	r := ns.Exec(ctxT(t, 10*time.Second), "ip", "-s", "-j", "link", "show", "dev", tunDevice)
	var links []struct {
		Stats64 struct {
			Rx linkCounters `json:"rx"`
			Tx linkCounters `json:"tx"`
		} `json:"stats64"`
	}
	if r.Err != nil || json.Unmarshal([]byte(r.Stdout), &links) != nil || len(links) != 1 {
		return linkStats{}
	}
	return linkStats{rx: links[0].Stats64.Rx, tx: links[0].Stats64.Tx}
}

// udpStats returns the Udp counters of /proc/net/snmp in ns.
func udpStats(t *testing.T, ns *netnstest.Namespace) map[string]int64 {
	return netStats(t, ns, "snmp", "Udp:")
}

// netStats returns the counters of the section (such as "Udp:" or
// "TcpExt:") of /proc/net/FILE in ns; empty when it cannot read them.
func netStats(t *testing.T, ns *netnstest.Namespace, file, section string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	var data []byte
	if err := ns.Do(func() (err error) {
		data, err = os.ReadFile("/proc/thread-self/net/" + file)
		return err
	}); err != nil {
		return out
	}
	var names []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != section {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		for i, v := range f[1:] {
			if i < len(names) {
				out[names[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
		break
	}
	return out
}
