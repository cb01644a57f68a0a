package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// startServer runs tgbench serve's handler on a loopback port for the
// test and returns its address.
func startServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{conns: make(map[net.Conn]struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.acceptLoop(ln)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	return ln.Addr().String()
}

func TestConnectAndHold(t *testing.T) {
	addr := startServer(t)
	var out, errb bytes.Buffer
	ctx := context.Background()
	if err := runConnect(ctx, []string{"-addr", addr, "-n", "200", "-c", "8", "-duration", "20s"}, &out, &errb); err != nil {
		t.Fatalf("connect: %v (%s)", err, errb.String())
	}
	var cr connectResult
	if err := json.Unmarshal(out.Bytes(), &cr); err != nil {
		t.Fatalf("connect output %q: %v", out.String(), err)
	}
	if cr.OK != 200 || cr.Failed != 0 || cr.FirstP50 <= 0 || cr.FirstP99 < cr.FirstP50 || cr.RatePerS <= 0 {
		t.Errorf("connect result %+v", cr)
	}
	out.Reset()
	if err := runConnect(ctx, []string{"-addr", addr, "-n", "50", "-c", "4", "-close", "server"}, &out, &errb); err != nil {
		t.Fatalf("connect -close server: %v (%s)", err, errb.String())
	}
	cr = connectResult{}
	if err := json.Unmarshal(out.Bytes(), &cr); err != nil || cr.OK != 50 {
		t.Errorf("connect -close server: %s (%v)", out.String(), err)
	}

	out.Reset()
	errb.Reset()
	if err := runHold(ctx, []string{"-addr", addr, "-n", "300", "-c", "20", "-duration", "100ms"}, &out, &errb); err != nil {
		t.Fatalf("hold: %v (%s)", err, errb.String())
	}
	if !strings.Contains(errb.String(), "held 300\n") {
		t.Errorf("hold's stderr %q lacks \"held 300\"", errb.String())
	}
	var hr holdResult
	if err := json.Unmarshal(out.Bytes(), &hr); err != nil {
		t.Fatalf("hold output %q: %v", out.String(), err)
	}
	if hr.Opened != 300 || hr.Reverified != 300 || hr.Failed != 0 || hr.ReverifyFailed != 0 {
		t.Errorf("hold result %+v", hr)
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var out, errb bytes.Buffer
	err = runConnect(context.Background(), []string{"-addr", addr, "-n", "5", "-c", "1", "-timeout", "2s"}, &out, &errb)
	if err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	var cr connectResult
	if json.Unmarshal(out.Bytes(), &cr) != nil || cr.Failed != 5 || len(cr.Errors) == 0 {
		t.Errorf("connect output %q", out.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"connect", "-n", "5"}, &out, &errb); code != 2 {
		t.Errorf("connect without -addr: exit %d, want 2", code)
	}
	if code := run([]string{"nope"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

func TestMedianPercentile(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond
	}
	if p := percentileMs(ds, 0.5); p != 50 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentileMs(ds, 0.99); p != 99 {
		t.Errorf("p99 = %v", p)
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	iperf := func(gbps float64) string {
		return fmt.Sprintf(`{"start":{"test_start":{"protocol":"TCP"}},"end":{"sum_sent":{"bytes":1e9,"retransmits":0},"sum_received":{"bytes":1e9,"bits_per_second":%g}}}`, gbps*1e9)
	}
	var raw strings.Builder
	for i, g := range []float64{10, 12, 11} {
		f := write(fmt.Sprintf("d%d.json", i), iperf(g))
		fmt.Fprintf(&raw, `{"kind":"iperf","path":"direct","mtu":1500,"test":"tcp1-up","rep":%d,"file":%q}`+"\n", i+1, f)
	}
	for i, g := range []float64{2, 3, 4} {
		f := write(fmt.Sprintf("t%d.json", i), iperf(g))
		fmt.Fprintf(&raw, `{"kind":"iperf","path":"tun-direct","mtu":1500,"test":"tcp1-up","rep":%d,"file":%q,"gw_cpu_ticks":150,"clk_tck":100}`+"\n", i+1, f)
	}
	raw.WriteString(`{"kind":"error","path":"tun-dante","mtu":1500,"test":"udp-up","msg":"danted did not start"}` + "\n")
	// UDP runs with the drop counters: the server's socket dropped in one
	// run of three, the TUN queue never, the proxy's counter unread.
	udp := `{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum_received":{"bytes":1e9,"bits_per_second":1e9,"lost_percent":%g}}}`
	for i, d := range []int{0, 0, 1691} {
		f := write(fmt.Sprintf("u%d.json", i), fmt.Sprintf(udp, float64(d)/1000))
		fmt.Fprintf(&raw, `{"kind":"iperf","path":"tun-direct","mtu":1500,"test":"udp-up","rep":%d,"file":%q,`+
			`"sock_drops_client":0,"sock_drops_proxy":-1,"sock_drops_server":%d,"tun_drops":0}`+"\n", i+1, f, d)
	}
	f := write("ud.json", fmt.Sprintf(udp, 0.0))
	fmt.Fprintf(&raw, `{"kind":"iperf","path":"direct","mtu":1500,"test":"udp-up","rep":1,"file":%q,"sock_drops_server":5}`+"\n", f)
	in := write("raw.jsonl", raw.String())
	out := filepath.Join(dir, "report.json")
	var stdout, stderr bytes.Buffer
	if err := runReport([]string{"-in", in, "-json", out, "-meta", "mode=test"}, &stdout, &stderr); err != nil {
		t.Fatalf("report: %v (%s)", err, stderr.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	find := func(path, fig string) result {
		for _, r := range rep.Results {
			if r.Path == path && r.Figure == fig {
				return r
			}
		}
		t.Fatalf("no %s %s in %s", path, fig, data)
		return result{}
	}
	tp := find("tun-direct", "throughput")
	if tp.Value != 3 || tp.RatioToDirect == nil || *tp.RatioToDirect != 3.0/11 {
		t.Errorf("tun-direct throughput %+v", tp)
	}
	if cpu := find("tun-direct", "gateway cpu"); cpu.Value != 1.5 || cpu.RatioToDirect != nil {
		t.Errorf("tun-direct cpu %+v", cpu)
	}
	findCase := func(path, test, fig string) (result, bool) {
		for _, r := range rep.Results {
			if r.Path == path && r.Test == test && r.Figure == fig {
				return r, true
			}
		}
		return result{}, false
	}
	if d, ok := findCase("tun-direct", "udp-up", figDropsServer); !ok || d.Value != 0 ||
		!slices.Equal(d.Values, []float64{0, 0, 1691}) || d.RatioToDirect != nil || !shown(d) {
		t.Errorf("server drops %+v (found %v, shown %v)", d, ok, shown(d))
	}
	if d, ok := findCase("tun-direct", "udp-up", figDropsTUN); !ok || d.Value != 0 || shown(d) {
		t.Errorf("TUN drops %+v (found %v): want 0, not shown", d, ok)
	}
	if d, ok := findCase("tun-direct", "udp-up", figDropsProxy); ok {
		t.Errorf("proxy drops %+v from a counter that was not read", d)
	}
	if _, ok := findCase("tun-direct", "tcp1-up", figDropsServer); ok {
		t.Error("drops for a TCP run")
	}
	if d, ok := findCase("direct", "udp-up", figDropsServer); !ok || d.Value != 5 {
		t.Errorf("direct server drops %+v (found %v)", d, ok)
	}
	if !strings.Contains(stdout.String(), figDropsServer) || strings.Contains(stdout.String(), figDropsTUN) {
		t.Errorf("the table shows drops only where there were any:\n%s", stdout.String())
	}
	if len(rep.Errors) != 1 || rep.Meta["mode"] != "test" {
		t.Errorf("errors %+v, meta %+v", rep.Errors, rep.Meta)
	}
	for _, want := range []string{"mode: test", "tun-direct tcp1-up@1500", "0.27", "danted did not start"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, stdout.String())
		}
	}
}
