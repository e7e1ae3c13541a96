package loadgen

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots writes the run's PNGs into dir, named after the scenario:
//
//	<name>-latency.png     op and delivery p50/p99 against offered load
//	                       (one point per ramp step and the steady phase)
//	<name>-connections.png server RSS (MiB) against connections open
//
// A plot with fewer than two points is skipped: one point is no curve. It
// returns the files written.
func WritePlots(r *Report, dir string) ([]string, error) {
	var out []string
	var errs []error
	if lat := latencyPoints(r); len(lat["op p50"]) >= 2 {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("mdsync-bench %s: latency against offered load", r.Scenario.Name)
		p.X.Label.Text = "offered ops/s (closed loop: achieved)"
		p.Y.Label.Text = "ms"
		p.Title.Padding = vg.Points(8)
		p.Legend.Top = true
		p.Legend.Left = true
		p.Legend.XOffs, p.Legend.YOffs = vg.Points(10), -vg.Points(4)
		if err := plotutil.AddLinePoints(p,
			"op p50", lat["op p50"], "op p99", lat["op p99"],
			"delivery p50", lat["delivery p50"], "delivery p99", lat["delivery p99"]); err != nil {
			errs = append(errs, err)
		} else {
			f := filepath.Join(dir, r.Scenario.Name+"-latency.png")
			if err := p.Save(7*vg.Inch, 4.5*vg.Inch, f); err != nil {
				errs = append(errs, err)
			} else {
				out = append(out, f)
			}
		}
	}
	if pts := rssPoints(r); len(pts) >= 2 {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("mdsync-bench %s: server RSS against connections", r.Scenario.Name)
		p.X.Label.Text = "connections open"
		p.Y.Label.Text = "server RSS, MiB"
		p.Title.Padding = vg.Points(8)
		p.Legend.Top = true
		p.Legend.Left = true
		p.Legend.XOffs, p.Legend.YOffs = vg.Points(10), -vg.Points(4)
		if err := plotutil.AddLinePoints(p, "RSS", pts); err != nil {
			errs = append(errs, err)
		} else {
			f := filepath.Join(dir, r.Scenario.Name+"-connections.png")
			if err := p.Save(7*vg.Inch, 4.5*vg.Inch, f); err != nil {
				errs = append(errs, err)
			} else {
				out = append(out, f)
			}
		}
	}
	return out, errors.Join(errs...)
}

// latencyPoints is one point per phase, x = offered rate, or the achieved
// rate for a closed loop (which offers all it can).
func latencyPoints(r *Report) map[string]plotter.XYs {
	m := map[string]plotter.XYs{}
	for _, ph := range r.Phases {
		if ph.Op.Count == 0 {
			continue
		}
		x := ph.OfferedRate
		if x == 0 {
			x = ph.OpsPerSec
		}
		m["op p50"] = append(m["op p50"], plotter.XY{X: x, Y: ph.Op.P50Ms})
		m["op p99"] = append(m["op p99"], plotter.XY{X: x, Y: ph.Op.P99Ms})
		m["delivery p50"] = append(m["delivery p50"], plotter.XY{X: x, Y: ph.Delivery.P50Ms})
		m["delivery p99"] = append(m["delivery p99"], plotter.XY{X: x, Y: ph.Delivery.P99Ms})
	}
	// A closed-loop phase sits at its achieved rate, which may be below an
	// open-loop step: lines go left to right.
	for _, pts := range m {
		sort.SliceStable(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
	}
	return m
}

// rssPoints are the connect phase's samples (connections rising), which
// is what the plot is about; samples without RSS (a server that is not
// ours) are left out.
func rssPoints(r *Report) plotter.XYs {
	var pts plotter.XYs
	for _, s := range r.Connect.Samples {
		if s.RSSBytes > 0 {
			pts = append(pts, plotter.XY{X: float64(s.Connections), Y: float64(s.RSSBytes) / (1 << 20)})
		}
	}
	return pts
}
