package console

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/sigil-iot/sigil/fleet/inventory"
)

// devicePageSize is how many devices the list shows per page.
const devicePageSize = 50

// DeviceQuery is the device list's search: State and Model are applied by
// the inventory; Owner, Group (exact, case-insensitive) and Q (a part of
// the ID, serial, model, owner, group or firmware; or a whole EK
// fingerprint) by the console.
type DeviceQuery struct {
	Q, State, Model, Owner, Group string
	// After continues after this device ID.
	After string
}

func parseDeviceQuery(v url.Values) (DeviceQuery, error) {
	q := DeviceQuery{
		Q: strings.TrimSpace(v.Get("q")), State: v.Get("state"), Model: strings.TrimSpace(v.Get("model")),
		Owner: strings.TrimSpace(v.Get("owner")), Group: strings.TrimSpace(v.Get("group")), After: v.Get("after"),
	}
	if q.State != "" && !inventory.State(q.State).Valid() {
		return q, badRequest{"state must be pending, active, quarantined or decommissioned"}
	}
	for _, s := range []string{q.Q, q.Model, q.Owner, q.Group, q.After} {
		if len(s) > 256 {
			return q, badRequest{"search terms are at most 256 characters"}
		}
	}
	return q, nil
}

// values encodes the query for links, with after as the cursor.
func (q DeviceQuery) values(after string) string {
	v := url.Values{}
	for k, s := range map[string]string{"q": q.Q, "state": q.State, "model": q.Model, "owner": q.Owner, "group": q.Group, "after": after} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if len(v) == 0 {
		return "/devices"
	}
	return "/devices?" + v.Encode()
}

// Filtered reports whether anything narrows the list.
func (q DeviceQuery) Filtered() bool {
	return q.Q != "" || q.State != "" || q.Model != "" || q.Owner != "" || q.Group != ""
}

// DeviceRow is a device in the list.
type DeviceRow struct {
	inventory.Device
	Online bool
}

// DeviceList is the devices page's data.
type DeviceList struct {
	Query  DeviceQuery
	States []string
	Rows   []DeviceRow
	// Next is the link to the following page ("" on the last); First the
	// link back to the first page when this is not it.
	Next, First string
	// Scanned counts the records examined; Partial says the scan budget
	// ran out before the page filled (Next continues the search).
	Scanned int
	Partial bool
}

// findDevices runs a device search: one page of at most limit matches, and
// the cursor to continue after ("" when the inventory is exhausted).
func (c *Console) findDevices(q DeviceQuery, limit int) (rows []inventory.Device, next string, scanned int, partial bool, err error) {
	// A whole device ID or EK fingerprint names one device: no scan.
	if q.Q != "" && q.After == "" {
		d, err := c.cfg.Inventory.Device(q.Q)
		if errors.Is(err, inventory.ErrNotFound) && len(q.Q) == 64 {
			d, err = c.cfg.Inventory.DeviceByEK(strings.ToLower(q.Q))
		}
		switch {
		case err == nil:
			if q.matches(d) {
				return []inventory.Device{*d}, "", 1, false, nil
			}
			return nil, "", 1, false, nil
		case !errors.Is(err, inventory.ErrNotFound):
			return nil, "", 0, false, err
		}
	}
	f := inventory.Filter{State: inventory.State(q.State), Model: q.Model, After: q.After, Limit: limit + 1}
	local := q.Q != "" || q.Owner != "" || q.Group != ""
	if local {
		f.Limit = 1000
	}
	for {
		devs, more, err := c.cfg.Inventory.ListDevices(f)
		if err != nil {
			return nil, "", scanned, false, err
		}
		for i := range devs {
			d := &devs[i]
			if len(rows) == limit {
				return rows, rows[len(rows)-1].ID, scanned, false, nil
			}
			scanned++
			if q.matches(d) {
				rows = append(rows, *d)
			}
			if scanned >= c.cfg.ScanBudget && i < len(devs)-1 {
				return rows, d.ID, scanned, len(rows) < limit, nil
			}
		}
		if more == "" {
			return rows, "", scanned, false, nil
		}
		if scanned >= c.cfg.ScanBudget {
			return rows, more, scanned, len(rows) < limit, nil
		}
		f.After = more
	}
}

// matches applies the filters the inventory does not.
func (q DeviceQuery) matches(d *inventory.Device) bool {
	if (q.State != "" && string(d.State) != q.State) || (q.Model != "" && d.Model != q.Model) {
		return false
	}
	if q.Owner != "" && !strings.EqualFold(d.Owner, q.Owner) {
		return false
	}
	if q.Group != "" && !strings.EqualFold(d.Group, q.Group) {
		return false
	}
	if q.Q == "" {
		return true
	}
	if strings.EqualFold(d.EKFingerprint, q.Q) {
		return true
	}
	lq := strings.ToLower(q.Q)
	for _, s := range []string{d.ID, d.Serial, d.Model, d.Owner, d.Group, d.Firmware} {
		if containsFold(s, lq) {
			return true
		}
	}
	return false
}

// containsFold reports whether sub is in s, ignoring case: the same as
// strings.Contains(strings.ToLower(s), strings.ToLower(sub)), without
// allocating when both are ASCII (device IDs, serials and names usually
// are). lsub is sub in lower case.
func containsFold(s, lsub string) bool {
	if !isASCII(s) || !isASCII(lsub) {
		return strings.Contains(strings.ToLower(s), lsub)
	}
	n := len(lsub)
next:
	for i := 0; i+n <= len(s); i++ {
		for j := 0; j < n; j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lsub[j] {
				continue next
			}
		}
		return true
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func (c *Console) loadDevices(r *http.Request) (any, error) {
	q, err := parseDeviceQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	devs, next, scanned, partial, err := c.findDevices(q, devicePageSize)
	if err != nil {
		return nil, err
	}
	out := DeviceList{Query: q, Scanned: scanned, Partial: partial,
		States: []string{"pending", "active", "quarantined", "decommissioned"}}
	for i := range devs {
		out.Rows = append(out.Rows, DeviceRow{Device: devs[i], Online: c.connected(&devs[i])})
	}
	if next != "" {
		out.Next = q.values(next)
	}
	if q.After != "" {
		out.First = q.values("")
	}
	return out, nil
}
