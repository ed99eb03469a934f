package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sigil-iot/sigil/fleet/api"
	"github.com/sigil-iot/sigil/fleet/inventory"
)

// devicePageSize is how many devices the list shows per page.
const devicePageSize = 50

// DeviceQuery is the device list's search. State, model, firmware, owner,
// group and tag (each exact, ignoring case) are served by the inventory's
// indexes, as is the order; Q (a part of the ID, serial, model, owner,
// group or firmware; or a whole EK fingerprint) and Connected (the
// broker's live sessions) are checked by the console on the records it
// examines, at most Config.ScanBudget per page.
type DeviceQuery struct {
	Q, State, Model, Firmware, Owner, Group, Tag string
	// Connected is "yes", "no" or "" (either).
	Connected string
	// Sort is the column to order by ("" for the ID); Desc reverses it.
	Sort string
	Desc bool
	// After continues after this cursor; At is how many devices the
	// pages before this one listed (for "Devices 51–100").
	After string
	At    int
}

// sortColumns are the orders the list offers, by their URL name.
func sortColumns() map[string]inventory.Field {
	return map[string]inventory.Field{"": inventory.FieldID, "id": inventory.FieldID, "state": inventory.FieldState, "model": inventory.FieldModel,
		"firmware": inventory.FieldFirmware, "owner": inventory.FieldOwner, "group": inventory.FieldGroup, "serial": inventory.FieldSerial,
		"last_seen": inventory.FieldLastSeen, "cert_expiry": inventory.FieldCertExpiry}
}

func parseDeviceQuery(v url.Values) (DeviceQuery, error) {
	trim := func(k string) string { return strings.TrimSpace(v.Get(k)) }
	q := DeviceQuery{Q: trim("q"), State: v.Get("state"), Model: trim("model"), Firmware: trim("firmware"), Owner: trim("owner"),
		Group: trim("group"), Tag: trim("tag"), Connected: v.Get("connected"), Sort: v.Get("sort"), Desc: v.Get("dir") == "desc", After: v.Get("after")}
	if q.State != "" && !inventory.State(q.State).Valid() {
		return q, badRequest{"state must be pending, active, quarantined or decommissioned"}
	}
	if q.Connected != "" && q.Connected != "yes" && q.Connected != "no" {
		return q, badRequest{"connected is yes or no"}
	}
	if _, ok := sortColumns()[q.Sort]; !ok {
		return q, badRequest{"sort by id, state, model, firmware, owner, group, serial, last_seen or cert_expiry"}
	}
	if d := v.Get("dir"); d != "" && d != "asc" && d != "desc" {
		return q, badRequest{"dir is asc or desc"}
	}
	for _, s := range []string{q.Q, q.Model, q.Firmware, q.Owner, q.Group, q.Tag, q.After} {
		if len(s) > 256 {
			return q, badRequest{"search terms are at most 256 characters"}
		}
	}
	if s := v.Get("at"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 1<<30 {
			return q, badRequest{"at is a count of devices"}
		}
		q.At = n
	}
	return q, nil
}

// values returns the query as URL values; with keepPage the cursor and
// position too.
func (q DeviceQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"q": q.Q, "state": q.State, "model": q.Model, "firmware": q.Firmware, "owner": q.Owner,
		"group": q.Group, "tag": q.Tag, "connected": q.Connected, "sort": q.Sort} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Desc {
		v.Set("dir", "desc")
	}
	return v
}

// link is the list's URL for this search, continuing after the cursor
// after ("" for the first page) with at devices listed before.
func (q DeviceQuery) link(after string, at int) string {
	v := q.values()
	if after != "" {
		v.Set("after", after)
		v.Set("at", strconv.Itoa(at))
	}
	if len(v) == 0 {
		return "/devices"
	}
	return "/devices?" + v.Encode()
}

// Filtered reports whether anything narrows the list.
func (q DeviceQuery) Filtered() bool {
	return q.Q != "" || q.State != "" || q.Model != "" || q.Firmware != "" || q.Owner != "" || q.Group != "" || q.Tag != "" || q.Connected != ""
}

// where is the part of the search the inventory's indexes serve.
func (q DeviceQuery) where() map[inventory.Field]string {
	return map[inventory.Field]string{inventory.FieldState: q.State, inventory.FieldModel: q.Model, inventory.FieldFirmware: q.Firmware,
		inventory.FieldOwner: q.Owner, inventory.FieldGroup: q.Group, inventory.FieldTag: q.Tag}
}

// Column is a sortable column header.
type Column struct {
	Label string
	// Link sorts by the column (or reverses the current order); Sort is
	// "ascending" or "descending" for the current order's column.
	Link, Sort string
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
	// Columns are the table's headers, by name.
	Columns map[string]Column
	// Next is the link to the following page ("" on the last); First the
	// link back to the first page when this is not it.
	Next, First string
	// Scanned counts the records examined; Partial says the scan budget
	// ran out before the page filled (Next continues the search).
	Scanned int
	Partial bool
	// Fleet counts every device; Total those the search matches, when
	// the indexes know it (Counted).
	Fleet, Total int
	Counted      bool
	// From and To number the rows shown ("Devices 51–100").
	From, To int
	// Filter carries the search to the bulk forms (scope "filter").
	Filter [][2]string
	// SortOptions are the orders the search form offers (value, label).
	SortOptions [][2]string
}

// findDevices runs a device search: one page of at most limit matches, and
// the cursor to continue after ("" when the inventory is exhausted).
func (c *Console) findDevices(q DeviceQuery, limit int) (rows []inventory.Device, next string, scanned int, partial bool, err error) {
	iq := inventory.Query{Where: q.where(), Order: sortColumns()[q.Sort], Desc: q.Desc, After: q.After, Limit: limit, Budget: c.cfg.ScanBudget}
	if q.Q != "" || q.Connected != "" {
		iq.Match = func(d *inventory.Device) bool { return c.matches(q, d) }
	}
	// A whole device ID or EK fingerprint names one device: no scan.
	if q.Q != "" && q.After == "" {
		d, err := c.cfg.Inventory.Device(context.TODO(), q.Q)
		if errors.Is(err, inventory.ErrNotFound) && len(q.Q) == 64 {
			d, err = c.cfg.Inventory.DeviceByEK(context.TODO(), strings.ToLower(q.Q))
		}
		switch {
		case err == nil:
			if iq.Matches(d) {
				return []inventory.Device{*d}, "", 1, false, nil
			}
			return nil, "", 1, false, nil
		case !errors.Is(err, inventory.ErrNotFound):
			return nil, "", 0, false, err
		}
	}
	page, err := c.cfg.Inventory.Query(context.TODO(), iq)
	if errors.Is(err, inventory.ErrQuery) {
		return nil, "", 0, false, badRequest{"the page link is not one this list made; start again from the first page"}
	}
	if err != nil {
		return nil, "", 0, false, err
	}
	return page.Devices, page.Next, page.Examined, page.Partial, nil
}

// matches applies the tests the inventory does not: the text and the
// live connection.
func (c *Console) matches(q DeviceQuery, d *inventory.Device) bool {
	if q.Connected != "" && c.connected(d) != (q.Connected == "yes") {
		return false
	}
	return d.MatchesText(q.Q)
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
	if out.Fleet, err = c.cfg.Inventory.Count(r.Context(), nil); err != nil {
		return nil, err
	}
	switch {
	case !q.Filtered():
		// The fleet's count is the list's: no second read of every record.
		out.Total, out.Counted = out.Fleet, true
	case q.Q == "" && q.Connected == "":
		if out.Total, err = c.cfg.Inventory.Count(r.Context(), q.where()); err != nil {
			return nil, err
		}
		out.Counted = true
	}
	for i := range devs {
		out.Rows = append(out.Rows, DeviceRow{Device: devs[i], Online: c.connected(&devs[i])})
	}
	out.From, out.To = q.At+1, q.At+len(devs)
	if next != "" {
		out.Next = q.link(next, out.To)
	}
	if q.After != "" {
		out.First = q.link("", 0)
	}
	out.SortOptions = [][2]string{{"", "Device ID"}, {"state", "State"}, {"model", "Model"}, {"firmware", "Firmware"}, {"owner", "Owner"},
		{"group", "Group"}, {"serial", "Serial"}, {"cert_expiry", "Certificate expiry"}, {"last_seen", "Last seen"}}
	out.Columns = map[string]Column{}
	for name, label := range map[string]string{"id": "Device", "state": "State", "model": "Model", "firmware": "Firmware", "owner": "Owner",
		"group": "Group", "serial": "Serial", "cert_expiry": "Cert. expires", "last_seen": "Last seen"} {
		col := Column{Label: label}
		s := q
		s.After, s.At = "", 0
		current := q.Sort == name || (q.Sort == "" && name == "id")
		s.Sort, s.Desc = name, name == "last_seen" // the newest first, unless asked otherwise
		if name == "id" {
			s.Sort = ""
		}
		if current {
			s.Desc = !q.Desc
			col.Sort = "ascending"
			if q.Desc {
				col.Sort = "descending"
			}
		}
		col.Link = s.link("", 0)
		out.Columns[name] = col
	}
	for k, vs := range q.values() {
		if k != "sort" && k != "dir" {
			out.Filter = append(out.Filter, [2]string{k, vs[0]})
		}
	}
	return out, nil
}

// bulkActions are the device list's bulk forms: the chosen devices (the
// boxes ticked, or every device the search matches) and one action, run
// through the API's bulk route of that action.
func bulkActions() []Action {
	action := func(name, verb string, fields func(form url.Values, req *api.BulkRequest) error) Action {
		return Action{Name: "devices.bulk." + name, Path: "/devices/bulk/" + name, API: "POST /api/v1/devices/bulk/" + name, Then: "/devices",
			Body: func(form url.Values) (any, error) {
				req, err := bulkRequest(form)
				if err == nil && fields != nil {
					err = fields(form, &req)
				}
				return req, err
			},
			Result: func(answer []byte, form url.Values) (Reveal, error) { return bulkReveal(name, verb, answer, form) },
		}
	}
	return []Action{
		action("tag", "Tagged", func(form url.Values, req *api.BulkRequest) error {
			req.Add, req.Remove = splitList(form.Get("add_tags")), splitList(form.Get("remove_tags"))
			if len(req.Add)+len(req.Remove) == 0 {
				return errUser("write the tags to add or to remove (e.g. canary, site:7)")
			}
			return nil
		}),
		action("attest", "Challenged", nil),
		action("rotate", "Asked to rotate", func(form url.Values, req *api.BulkRequest) error {
			req.Reason = strings.TrimSpace(form.Get("justification"))
			return nil
		}),
		action("quarantine", "Quarantined", func(form url.Values, req *api.BulkRequest) error {
			j, err := justification(form)
			req.Justification = j
			return err
		}),
	}
}

// bulkFilterKeys are the search's fields a bulk form carries.
func bulkFilterKeys() []string {
	return []string{"q", "state", "model", "firmware", "owner", "group", "tag", "connected"}
}

// bulkRequest reads the devices a bulk form chose.
func bulkRequest(form url.Values) (api.BulkRequest, error) {
	var req api.BulkRequest
	switch form.Get("scope") {
	case "filter":
		f := api.DeviceFilter{State: form.Get("state"), Model: form.Get("model"), Firmware: form.Get("firmware"), Owner: form.Get("owner"),
			Group: form.Get("group"), Tag: form.Get("tag"), Q: form.Get("q")}
		switch form.Get("connected") {
		case "yes", "no":
			on := form.Get("connected") == "yes"
			f.Connected = &on
		}
		req.Filter, req.After = &f, form.Get("after")
	case "selected", "":
		req.DeviceIDs = form["id"]
		if len(req.DeviceIDs) == 0 {
			return req, errUser("tick the devices to act on, or choose every device the search matches")
		}
		if len(req.DeviceIDs) > api.BulkLimit {
			return req, errUser(fmt.Sprintf("at most %d devices at once", api.BulkLimit))
		}
	default:
		return req, errUser("choose the ticked devices or every device the search matches")
	}
	return req, nil
}

// bulkReveal reports what a bulk call did, and offers to continue a
// filter that has more matches.
func bulkReveal(name, verb string, answer []byte, form url.Values) (Reveal, error) {
	var res api.BulkResult
	if err := json.Unmarshal(answer, &res); err != nil {
		return Reveal{}, err
	}
	back := url.Values{}
	for _, k := range bulkFilterKeys() {
		if v := form.Get(k); v != "" {
			back.Set(k, v)
		}
	}
	rv := Reveal{Heading: verb + " " + mustPlural(len(res.Done), "device"), Back: "/devices"}
	if len(back) > 0 {
		rv.Back = "/devices?" + back.Encode()
	}
	if res.Rotation != nil {
		rv.Heading = "Rotation started"
		rv.Facts = append(rv.Facts, [2]string{"Rotation job", res.Rotation.ID}, [2]string{"Devices", num(int64(res.Rotation.Progress.Total))})
		rv.Note = "The rotation service asks the devices at its rate; each renews with a fresh attestation."
	}
	for _, s := range res.Skipped {
		rv.Facts = append(rv.Facts, [2]string{"Skipped " + short(s.ID), s.Reason})
	}
	if res.Next != "" {
		fields := [][2]string{{"scope", "filter"}, {"after", res.Next}}
		for _, k := range append(bulkFilterKeys(), "add_tags", "remove_tags", "justification") {
			if v := form.Get(k); v != "" {
				fields = append(fields, [2]string{k, v})
			}
		}
		rv.Continue = &Continue{Action: "/devices/bulk/" + name, Fields: fields,
			Label: "Continue with the next devices that match",
			Note:  fmt.Sprintf("More devices may match: this step examined %s and acts on at most %s at a time.", mustPlural(res.Examined, "device"), num(api.BulkLimit))}
	}
	return rv, nil
}

// mustPlural is plural for Go code, whose noun is always given.
func mustPlural(n any, forms ...string) string {
	s, _ := plural(n, forms...)
	return s
}
