package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// A record is one line of the raw file scripts/bench writes: one run of
// one case (a path, an MTU, a test), with the output of the tool that
// measured it and the gateway's counters around it.
type record struct {
	Kind string `json:"kind"` // iperf, connect, hold, or error (the case could not run)
	Path string `json:"path"` // direct, tun-direct, tun-tungate, socks-microsocks, ...
	MTU  int    `json:"mtu"`
	Test string `json:"test"` // tcp1-up, tcp4-down, udp-up, connect, hold, ...
	Rep  int    `json:"rep"`
	File string `json:"file"` // the JSON output of iperf3 -J, tgbench connect or hold
	Msg  string `json:"msg"`  // kind error: what went wrong

	// Ref names the path the figures are also compared with (besides
	// direct): the plain SOCKS5 path for a TUN path through a proxy, or
	// tungate's path for another gateway.
	Ref string `json:"ref"`

	// CPU time (utime+stime, clock ticks) the gateway with the TUN
	// device and the upstream proxy used during the run; -1 when there is
	// none or it could not be read.
	GwCPUTicks int64 `json:"gw_cpu_ticks"`
	UpCPUTicks int64 `json:"up_cpu_ticks"`
	ClkTck     int64 `json:"clk_tck"`
	// VmRSS (KiB) before the connections were opened and while held.
	GwRSSBefore int64 `json:"gw_rss_kb_before"`
	GwRSSHeld   int64 `json:"gw_rss_kb_held"`
	UpRSSBefore int64 `json:"up_rss_kb_before"`
	UpRSSHeld   int64 `json:"up_rss_kb_held"`
	// What a UDP run lost where the kernel counts it: datagrams dropped
	// at full socket buffers in the client's, the proxy's and the
	// server's namespace, and packets the TUN device dropped with its
	// queue full. Absent for other runs; -1 when not read.
	SockDropsClient *int64 `json:"sock_drops_client"`
	SockDropsProxy  *int64 `json:"sock_drops_proxy"`
	SockDropsServer *int64 `json:"sock_drops_server"`
	TUNDrops        *int64 `json:"tun_drops"`
}

// Figures of where UDP datagrams were dropped (see record).
const (
	figDropsClient = "drops: client sockets"
	figDropsProxy  = "drops: proxy sockets"
	figDropsServer = "drops: server sockets"
	figDropsTUN    = "drops: TUN queue"
)

// iperfOut is the part of iperf3 -J output the report reads.
type iperfOut struct {
	Start struct {
		TestStart struct {
			Protocol string `json:"protocol"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   float64 `json:"retransmits"`
	LostPercent   float64 `json:"lost_percent"`
	Packets       float64 `json:"packets"`
	LostPackets   float64 `json:"lost_packets"`
}

// figure is one measured quantity of a run.
type figure struct {
	name, unit string
	value      float64
}

// result is one row of the report: the median of a figure over the runs
// of a case.
type result struct {
	Case          string    `json:"case"`
	Path          string    `json:"path"`
	MTU           int       `json:"mtu"`
	Test          string    `json:"test"`
	Figure        string    `json:"figure"`
	Unit          string    `json:"unit"`
	Value         float64   `json:"value"`  // median of values
	Values        []float64 `json:"values"` // one per run
	RatioToDirect *float64  `json:"ratio_to_direct"`
	Ref           string    `json:"ref,omitempty"`
	RatioToRef    *float64  `json:"ratio_to_ref,omitempty"`
}

type caseError struct {
	Path string `json:"path"`
	MTU  int    `json:"mtu,omitempty"`
	Test string `json:"test,omitempty"`
	Rep  int    `json:"rep,omitempty"`
	Msg  string `json:"msg"`
}

type report struct {
	Meta    map[string]string `json:"meta"`
	Results []result          `json:"results"`
	Errors  []caseError       `json:"errors"`
}

func runReport(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("report", stderr)
	in := fs.String("in", "", "the raw `file` scripts/bench wrote (one JSON record per line)")
	out := fs.String("json", "", "also write the report as JSON to this `file`")
	var meta listFlag
	fs.Var(&meta, "meta", "`key=value` to print above the table and put in the JSON; repeatable")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *in == "" {
		return &usageError{msg: "-in is required"}
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	var recs []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		r := record{GwCPUTicks: -1, UpCPUTicks: -1}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s:%d: %v", *in, line, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	rep := buildReport(recs)
	rep.Meta = make(map[string]string)
	var metaKeys []string
	for _, kv := range meta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return &usageError{msg: fmt.Sprintf("-meta %q: want key=value", kv)}
		}
		if _, dup := rep.Meta[k]; !dup {
			metaKeys = append(metaKeys, k)
		}
		rep.Meta[k] = v
	}
	for _, k := range metaKeys {
		fmt.Fprintf(stdout, "%s: %s\n", k, rep.Meta[k])
	}
	fmt.Fprintln(stdout)
	printTable(stdout, rep)
	if *out != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// figures extracts the figures of one run; an error means the run's
// output is missing or reports a failure.
func figures(r record) ([]figure, error) {
	data, err := os.ReadFile(r.File)
	if err != nil {
		return nil, err
	}
	cpu := func(ticks int64, name string, gb float64, out []figure) []figure {
		if ticks < 0 || r.ClkTck <= 0 || gb <= 0 {
			return out
		}
		return append(out, figure{name, "s/GB", float64(ticks) / float64(r.ClkTck) / gb})
	}
	switch r.Kind {
	case "iperf":
		var o iperfOut
		if err := json.Unmarshal(data, &o); err != nil {
			return nil, fmt.Errorf("iperf3 output is not JSON: %v", err)
		}
		if o.Error != "" {
			return nil, fmt.Errorf("iperf3: %s", o.Error)
		}
		recv := o.End.SumReceived
		if recv.Bytes <= 0 {
			return nil, fmt.Errorf("iperf3 moved no data")
		}
		gb := recv.Bytes / 1e9
		var fs []figure
		fs = append(fs, figure{"throughput", "Gbit/s", recv.BitsPerSecond / 1e9})
		if strings.EqualFold(o.Start.TestStart.Protocol, "UDP") {
			fs = append(fs, figure{"loss", "%", recv.LostPercent})
			for _, d := range []struct {
				name string
				n    *int64
			}{{figDropsClient, r.SockDropsClient}, {figDropsProxy, r.SockDropsProxy}, {figDropsServer, r.SockDropsServer}, {figDropsTUN, r.TUNDrops}} {
				if d.n != nil && *d.n >= 0 {
					fs = append(fs, figure{d.name, "count", float64(*d.n)})
				}
			}
		} else {
			fs = append(fs, figure{"retransmits", "count", o.End.SumSent.Retransmits})
		}
		fs = cpu(r.GwCPUTicks, "gateway cpu", gb, fs)
		fs = cpu(r.UpCPUTicks, "upstream cpu", gb, fs)
		return fs, nil
	case "connect":
		var o connectResult
		if err := json.Unmarshal(data, &o); err != nil {
			return nil, fmt.Errorf("tgbench connect output is not JSON: %v", err)
		}
		if o.OK == 0 {
			return nil, fmt.Errorf("no connection succeeded (%d failed)", o.Failed)
		}
		fs := []figure{
			{"rate", "conn/s", o.RatePerS},
			{"first byte p50", "ms", o.FirstP50},
			{"first byte p99", "ms", o.FirstP99},
			{"connect p50", "ms", o.ConnectP50},
			{"failed", "count", float64(o.Failed)},
		}
		perConn := func(ticks int64, name string) {
			if ticks >= 0 && r.ClkTck > 0 {
				fs = append(fs, figure{name, "us/conn", float64(ticks) / float64(r.ClkTck) * 1e6 / float64(o.OK)})
			}
		}
		perConn(r.GwCPUTicks, "gateway cpu")
		perConn(r.UpCPUTicks, "upstream cpu")
		return fs, nil
	case "hold":
		var o holdResult
		if err := json.Unmarshal(data, &o); err != nil {
			return nil, fmt.Errorf("tgbench hold output is not JSON: %v", err)
		}
		fs := []figure{
			{"held and verified", "conns", float64(o.Opened - o.ReverifyFailed)},
			{"open rate", "conn/s", o.OpenRatePerS},
		}
		rss := func(name string, before, held int64) {
			if held <= 0 {
				return
			}
			fs = append(fs, figure{name + " RSS held", "MiB", float64(held) / 1024})
			if before > 0 && o.Opened > 0 {
				fs = append(fs, figure{name + " RSS per conn", "KiB", float64(held-before) / float64(o.Opened)})
			}
		}
		rss("gateway", r.GwRSSBefore, r.GwRSSHeld)
		rss("upstream", r.UpRSSBefore, r.UpRSSHeld)
		if o.Opened < int64(o.N) || o.ReverifyFailed > 0 {
			return fs, fmt.Errorf("%d of %d connections opened and verified, %d failed after holding", o.Opened, o.N, o.ReverifyFailed)
		}
		return fs, nil
	}
	return nil, fmt.Errorf("unknown record kind %q", r.Kind)
}

// caseKey identifies a case: its runs are aggregated.
type caseKey struct {
	path, test string
	mtu        int
}

// caseName is the label of a case in the table.
func caseName(k caseKey) string {
	switch k.test {
	case "latency", "rate", "hold":
		return k.path + " " + k.test
	}
	return fmt.Sprintf("%s %s@%d", k.path, k.test, k.mtu)
}

// buildReport aggregates the runs: the median of each figure per case,
// and its ratio to the direct path's median of the same test and MTU.
func buildReport(recs []record) report {
	type agg struct {
		ref    string
		order  []string // figure names in first-seen order
		units  map[string]string
		values map[string][]float64
	}
	var keys []caseKey
	cases := make(map[caseKey]*agg)
	rep := report{Results: []result{}, Errors: []caseError{}}
	for _, r := range recs {
		k := caseKey{r.Path, r.Test, r.MTU}
		if r.Kind == "error" {
			rep.Errors = append(rep.Errors, caseError{r.Path, r.MTU, r.Test, r.Rep, r.Msg})
			continue
		}
		a := cases[k]
		if a == nil {
			a = &agg{units: make(map[string]string), values: make(map[string][]float64)}
			cases[k] = a
			keys = append(keys, k)
		}
		if r.Ref != "" {
			a.ref = r.Ref
		}
		fs, err := figures(r)
		if err != nil {
			rep.Errors = append(rep.Errors, caseError{r.Path, r.MTU, r.Test, r.Rep, err.Error()})
		}
		for _, f := range fs {
			if _, ok := a.units[f.name]; !ok {
				a.order = append(a.order, f.name)
				a.units[f.name] = f.unit
			}
			a.values[f.name] = append(a.values[f.name], f.value)
		}
	}
	// Rows go by MTU, then test, then path, tests and paths in the order
	// they first appear (the script measures the direct path first).
	testIdx, pathIdx := make(map[string]int), make(map[string]int)
	for _, k := range keys {
		if _, ok := testIdx[k.test]; !ok {
			testIdx[k.test] = len(testIdx)
		}
		if _, ok := pathIdx[k.path]; !ok {
			pathIdx[k.path] = len(pathIdx)
		}
	}
	slices.SortStableFunc(keys, func(a, b caseKey) int {
		if a.mtu != b.mtu {
			return a.mtu - b.mtu
		}
		if testIdx[a.test] != testIdx[b.test] {
			return testIdx[a.test] - testIdx[b.test]
		}
		return pathIdx[a.path] - pathIdx[b.path]
	})
	medians := make(map[caseKey]map[string]float64)
	for _, k := range keys {
		m := make(map[string]float64)
		for name, vs := range cases[k].values {
			m[name] = median(vs)
		}
		medians[k] = m
	}
	ratio := func(v float64, k caseKey, name string) *float64 {
		ref, ok := medians[k][name]
		if !ok || ref == 0 || math.IsNaN(ref) {
			return nil
		}
		r := v / ref
		return &r
	}
	for _, k := range keys {
		a := cases[k]
		for _, name := range a.order {
			vs := a.values[name]
			res := result{
				Case: caseName(k), Path: k.path, MTU: k.mtu, Test: k.test,
				Figure: name, Unit: a.units[name],
				Value: median(vs), Values: vs,
			}
			// Counts and loss percentages have no meaningful ratio.
			if !isCount(name) {
				res.RatioToDirect = ratio(res.Value, caseKey{"direct", k.test, k.mtu}, name)
				if a.ref != "" && a.ref != k.path {
					res.Ref = a.ref
					res.RatioToRef = ratio(res.Value, caseKey{a.ref, k.test, k.mtu}, name)
				}
			}
			rep.Results = append(rep.Results, res)
		}
	}
	return rep
}

// median of vs (the mean of the middle two for an even count).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// printTable writes the results as a table of the headline figures (see
// shown; the JSON has all of them).
func printTable(w io.Writer, rep report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tFIGURE\tVALUE\tUNIT\tx DIRECT\tx REF\tRUNS (min..max)")
	last := ""
	for _, r := range rep.Results {
		if !shown(r) {
			continue
		}
		name := r.Case
		if name == last {
			name = ""
		} else {
			last = r.Case
		}
		ref := "-"
		if r.RatioToRef != nil {
			ref = fmt.Sprintf("%.2f (%s)", *r.RatioToRef, r.Ref)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, r.Figure, num(r.Value), r.Unit, ratioStr(r.RatioToDirect), ref, spread(r.Values))
	}
	tw.Flush()
	if len(rep.Errors) > 0 {
		fmt.Fprintln(w, "\nCases or runs that failed:")
		for _, e := range rep.Errors {
			k := caseName(caseKey{e.Path, e.Test, e.MTU})
			if e.Test == "" {
				k = e.Path
			}
			if e.Rep > 0 {
				k += fmt.Sprintf(" (run %d)", e.Rep)
			}
			fmt.Fprintf(w, "  %s: %s\n", k, e.Msg)
		}
	}
}

// isCount says whether a figure is a count or a loss percentage, which
// have no meaningful ratio.
func isCount(figure string) bool {
	switch figure {
	case "failed", "retransmits", "loss", "held and verified",
		figDropsClient, figDropsProxy, figDropsServer, figDropsTUN:
		return true
	}
	return false
}

// shown says whether the table shows a row: the latency case shows its
// first-byte percentiles, the rate case its rate; failed connections and
// drops appear only when there were any; retransmits only in the JSON.
func shown(r result) bool {
	switch r.Figure {
	case "failed", figDropsClient, figDropsProxy, figDropsServer, figDropsTUN:
		return r.Value != 0 || slices.ContainsFunc(r.Values, func(v float64) bool { return v != 0 })
	case "connect p50", "retransmits":
		return false
	case "rate":
		return r.Test != "latency"
	case "first byte p50", "first byte p99":
		return r.Test != "rate"
	case "gateway cpu", "upstream cpu":
		return r.Test != "latency"
	}
	return true
}

func ratioStr(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *r)
}

// num formats v with about three significant digits.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "-"
	case a >= 1000 || a == math.Trunc(a) && a < 1e15:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

func spread(vs []float64) string {
	if len(vs) < 2 {
		return fmt.Sprintf("%d run", len(vs))
	}
	return fmt.Sprintf("%d: %s..%s", len(vs), num(slices.Min(vs)), num(slices.Max(vs)))
}
