package policy

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Registers as nf_tables numbers them: the 16-byte registers 1 and 2.
const (
	reg1 = 1
	reg2 = 2
)

// Apply replaces the policy table in the network namespace open at nsFd
// (-1: the caller's) with rs, in one netlink batch: the kernel swaps old
// for new atomically, so no packet sees a half-built policy.
func Apply(nsFd int, rs Ruleset) error {
	_, err := apply(nsFd, rs)
	return err
}

// apply is Apply, returning the shape it installed, its sets' contents
// included.
func apply(nsFd int, rs Ruleset) (Shape, error) {
	c, err := conn(nsFd, batchBytes(rs))
	if err != nil {
		return Shape{}, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	b := &builder{c: c, now: map[string]setContent{}}
	if err := build(b, t, rs, tenantCount(rs)); err != nil {
		return Shape{}, err
	}
	if err := c.Flush(); err != nil {
		return Shape{}, fmt.Errorf("apply nftables policy: %w", err)
	}
	shape := ShapeOf(rs)
	shape.sets = b.now
	return shape, nil
}

// Update installs rs in the namespace open at nsFd, where a table of shape
// installed (nil if unknown) is in place, and returns the shape in place
// after. When rs fits the table (Shape.Fits: the usual case of a
// container coming or going) only the sets are replaced, each flushed and
// refilled in one batch, as atomic as Apply; otherwise, or if that fails,
// the table is replaced whole.
//
// Replacing the table unhooks and rehooks its base chains, which waits
// out RCU grace periods: 8-18 ms an apply here, twice in every
// container's life (attach and detach). So does flushing a set, or
// deleting an element of one (10-13 ms); adding elements does not. A set
// whose contents the installed shape knows (one Update or apply
// returned) is therefore changed element by element: a container's
// attach only adds, and costs a millisecond. A set whose contents are
// unknown, or an interval set that changed, is flushed and refilled.
func Update(nsFd int, installed *Shape, rs Ruleset) (Shape, error) {
	if installed == nil || !installed.Fits(rs) {
		return apply(nsFd, rs)
	}
	c, err := conn(nsFd, batchBytes(rs))
	if err != nil {
		return Shape{}, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	b := &builder{c: c, refill: true, installed: installed.sets, now: map[string]setContent{}}
	if err := build(b, t, rs, installed.Tenants); err != nil {
		return Shape{}, err
	}
	if err := c.Flush(); err != nil {
		// The table may have been changed behind our back (an operator's
		// nft): replace it whole.
		return apply(nsFd, rs)
	}
	out := *installed
	out.sets = b.now
	return out, nil
}

// Remove deletes the policy table, if present.
func Remove(nsFd int) error {
	c, err := conn(nsFd, 0)
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables policy: %w", err)
	}
	return nil
}

// batchBytes bounds the size of the netlink batch that installs rs: the
// whole policy goes in one batch (that is what makes the swap atomic), and
// a batch must fit the socket's send buffer.
func batchBytes(rs Ruleset) int {
	n := 2 * len(rs.Tenant) // tenant map and member set
	n += 2 * (len(rs.EgressLimited4) + len(rs.EgressLimited6))
	for _, ms := range [][]Match{rs.Ingress, rs.Egress} {
		for _, m := range ms {
			n += 2 * (len(m.Src) + len(m.Dst))
		}
	}
	return 1<<20 + 128*n
}

// conn opens an nftables connection in the namespace open at nsFd (-1: the
// caller's), able to send a batch of sndbuf bytes (0: the default).
func conn(nsFd, sndbuf int) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if nsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(nsFd))
	}
	if sndbuf > 0 {
		// SO_SNDBUFFORCE, as nft does: the plain option is capped by
		// net.core.wmem_max, too small for the sets of a large cluster.
		opts = append(opts, nftables.WithSockOptions(func(nc *netlink.Conn) error {
			raw, err := nc.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := raw.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf)
			}); err != nil {
				return err
			}
			return serr
		}))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// builder sends what build makes: the whole table, or (refill) only new
// contents for the sets of a table already in place: what changed, for
// the sets whose installed contents are known.
type builder struct {
	c      *nftables.Conn
	refill bool
	// installed are the sets' contents in place (nil: unknown); now
	// records what build puts in them.
	installed, now map[string]setContent
}

func contentOf(s *nftables.Set, els []nftables.SetElement) setContent {
	var c setContent
	if s.Interval {
		var b []byte
		for _, e := range els {
			b = fmt.Appendf(b, "%x/%v;", e.Key, e.IntervalEnd)
		}
		c.interval = string(b)
		return c
	}
	c.els = make(map[string]string, len(els))
	for _, e := range els {
		v := ""
		if e.VerdictData != nil {
			v = fmt.Sprintf("%d:%s", e.VerdictData.Kind, e.VerdictData.Chain)
		}
		c.els[string(e.Key)] = v
	}
	return c
}

func (c setContent) equal(o setContent) bool {
	return c.interval == o.interval && maps.Equal(c.els, o.els)
}

// diffElems are the elements of want to add to a set holding old, and the
// keys to delete from it (an element whose verdict changed is both).
func diffElems(old setContent, want []nftables.SetElement) (add, del []nftables.SetElement) {
	keep := map[string]bool{}
	for _, e := range want {
		v := ""
		if e.VerdictData != nil {
			v = fmt.Sprintf("%d:%s", e.VerdictData.Kind, e.VerdictData.Chain)
		}
		ov, ok := old.els[string(e.Key)]
		switch {
		case !ok:
			add = append(add, e)
		case ov != v:
			del = append(del, nftables.SetElement{Key: e.Key})
			add = append(add, e)
		}
		keep[string(e.Key)] = true
	}
	for k := range old.els {
		if !keep[k] {
			del = append(del, nftables.SetElement{Key: []byte(k)})
		}
	}
	slices.SortFunc(del, func(a, b nftables.SetElement) int { return bytes.Compare(a.Key, b.Key) })
	return add, del
}

func (b *builder) chain(ch *nftables.Chain) *nftables.Chain {
	if b.refill {
		return ch
	}
	return b.c.AddChain(ch)
}

func (b *builder) rule(r *nftables.Rule) {
	if !b.refill {
		b.c.AddRule(r)
	}
}

// set adds s (or, refilling, empties it) and then its elements, in
// chunks: the kernel takes a set's elements in one nested attribute,
// whose length is 16 bits, so one message holds a few hundred at most.
// The chunks share the batch, so the set still appears whole. A chunk
// never ends between the start and the end of an interval.
func (b *builder) set(s *nftables.Set, els []nftables.SetElement) error {
	content := contentOf(s, els)
	if b.now != nil {
		b.now[s.Name] = content
	}
	if b.refill {
		old, known := b.installed[s.Name]
		switch {
		case known && old.equal(content):
			return nil
		case known && !s.Interval:
			add, del := diffElems(old, els)
			for len(del) > 0 {
				n := min(256, len(del))
				if err := b.c.SetDeleteElements(s, del[:n]); err != nil {
					return fmt.Errorf("nftables set %s: %w", s.Name, err)
				}
				del = del[n:]
			}
			els = add
		default:
			b.c.FlushSet(s)
		}
	} else if err := b.c.AddSet(s, nil); err != nil {
		return fmt.Errorf("nftables set %s: %w", s.Name, err)
	}
	const chunk = 256
	for len(els) > 0 {
		n := min(chunk, len(els))
		if n < len(els) && els[n].IntervalEnd {
			n++
		}
		if err := b.c.SetAddElements(s, els[:n]); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.Name, err)
		}
		els = els[n:]
	}
	return nil
}

// family is what the rules of one address family differ in.
type family struct {
	v6           bool
	suffix       string
	nfproto      byte
	saddr, daddr uint32 // payload offsets in the network header
	alen         uint32
	keyType      nftables.SetDatatype
}

func families() []family {
	return []family{
		{v6: false, suffix: "4", nfproto: unix.NFPROTO_IPV4, saddr: 12, daddr: 16, alen: 4, keyType: nftables.TypeIPAddr},
		{v6: true, suffix: "6", nfproto: unix.NFPROTO_IPV6, saddr: 8, daddr: 24, alen: 16, keyType: nftables.TypeIP6Addr},
	}
}

func (f family) has(a netip.Addr) bool { return a.Is6() == f.v6 }

// build makes the table for rs, with a chain and a member set for each of
// tenants tenants (at least rs's) in each family.
func build(b *builder, t *nftables.Table, rs Ruleset, tenants int) error {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}

	intervalSet := func(f family, name string, rs []Range) (*nftables.Set, error) {
		s := &nftables.Set{Table: t, Name: name, KeyType: f.keyType, Interval: true}
		if err := b.set(s, intervalElems(f, rs)); err != nil {
			return nil, err
		}
		return s, nil
	}

	// The per-family chains first: the forward chain's jumps name them.
	for _, f := range families() {
		// Same-tenant traffic: the source's tenant picks, through a verdict
		// map, a chain that accepts destinations of that tenant. Rules and
		// chains grow with tenants; containers are only set elements.
		byTenant := map[uint32][]nftables.SetElement{}
		for a, num := range rs.Tenant {
			if f.has(a) {
				byTenant[num] = append(byTenant[num], nftables.SetElement{Key: a.AsSlice()})
			}
		}
		var tel []nftables.SetElement
		for num := uint32(1); num <= uint32(tenants); num++ {
			members := &nftables.Set{Table: t, Name: fmt.Sprintf("members%s_%d", f.suffix, num), KeyType: f.keyType}
			if err := b.set(members, byTenant[num]); err != nil {
				return err
			}
			same := b.chain(&nftables.Chain{Table: t, Name: fmt.Sprintf("same%s_%d", f.suffix, num)})
			b.rule(&nftables.Rule{Table: t, Chain: same, Exprs: flat(f.nfprotoIs(),
				f.addr(f.daddr, reg1), &expr.Lookup{SourceRegister: reg1, SetName: members.Name, SetID: members.ID}, accept)})
			for _, e := range byTenant[num] {
				tel = append(tel, nftables.SetElement{Key: e.Key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: same.Name}})
			}
		}
		tenant := &nftables.Set{Table: t, Name: "tenant" + f.suffix, IsMap: true, KeyType: f.keyType, DataType: nftables.TypeVerdict}
		if err := b.set(tenant, tel); err != nil {
			return err
		}
		sameTenant := flat(f.nfprotoIs(), f.addr(f.saddr, reg1),
			&expr.Lookup{SourceRegister: reg1, DestRegister: 0 /* verdict */, IsDestRegSet: true, SetName: tenant.Name, SetID: tenant.ID})

		egress := b.chain(&nftables.Chain{Table: t, Name: "egress" + f.suffix})
		limitedRanges := rs.EgressLimited4
		if f.v6 {
			limitedRanges = rs.EgressLimited6
		}
		limited, err := intervalSet(f, "egress_limited"+f.suffix, limitedRanges)
		if err != nil {
			return err
		}
		b.rule(&nftables.Rule{Table: t, Chain: egress, Exprs: flat(f.nfprotoIs(),
			f.addr(f.saddr, reg1), &expr.Lookup{SourceRegister: reg1, SetName: limited.Name, SetID: limited.ID, Invert: true}, ret)})
		b.rule(&nftables.Rule{Table: t, Chain: egress, Exprs: sameTenant})
		for i, m := range rs.Egress {
			if m.V6 != f.v6 {
				continue
			}
			e, err := f.matchExprs(m, fmt.Sprintf("egress%d", i), intervalSet)
			if err != nil {
				return err
			}
			b.rule(&nftables.Rule{Table: t, Chain: egress, Exprs: flat(e, ret), UserData: userdata.AppendString(nil, userdata.TypeComment, m.Comment)})
		}
		b.rule(&nftables.Rule{Table: t, Chain: egress, Exprs: flat(drop)})

		ingress := b.chain(&nftables.Chain{Table: t, Name: "ingress" + f.suffix})
		// Published-port traffic was let in by our own DNAT; other tables'
		// forward chains (the host firewall) still judge it, since every
		// base chain on a hook must accept a packet.
		b.rule(&nftables.Rule{Table: t, Chain: ingress, Exprs: flat(ctBits(expr.CtKeySTATUS, 1<<5 /* IPS_DST_NAT */), accept)})
		b.rule(&nftables.Rule{Table: t, Chain: ingress, Exprs: sameTenant})
		for i, m := range rs.Ingress {
			if m.V6 != f.v6 {
				continue
			}
			e, err := f.matchExprs(m, fmt.Sprintf("ingress%d", i), intervalSet)
			if err != nil {
				return err
			}
			b.rule(&nftables.Rule{Table: t, Chain: ingress, Exprs: flat(e, accept), UserData: userdata.AppendString(nil, userdata.TypeComment, m.Comment)})
		}
		b.rule(&nftables.Rule{Table: t, Chain: ingress, Exprs: flat(drop)})
	}

	policyAccept := nftables.ChainPolicyAccept
	fwd := b.chain(&nftables.Chain{Table: t, Name: "forward", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policyAccept})
	// Tenant policy judges by source address, so a container must not send
	// with another's. For IPv4 the host end's strict rp_filter sees to it;
	// IPv6 has no rp_filter, so the same check is made here, on every
	// packet (established ones too, against injection into others' flows).
	b.rule(&nftables.Rule{Table: t, Chain: fwd, Exprs: flat(
		families()[1].nfprotoIs(), ifPrefix(expr.MetaKeyIIFNAME),
		&expr.Fib{Register: reg1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: make([]byte, 4)}, drop)})
	// Established flows skip every lookup: policy costs nothing after the
	// first packet of a connection.
	b.rule(&nftables.Rule{Table: t, Chain: fwd, Exprs: flat(
		ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept)})
	for _, dir := range []struct {
		key   expr.MetaKey
		chain string
	}{{expr.MetaKeyIIFNAME, "egress"}, {expr.MetaKeyOIFNAME, "ingress"}} {
		for _, f := range families() {
			b.rule(&nftables.Rule{Table: t, Chain: fwd, Exprs: flat(
				ifPrefix(dir.key), f.nfprotoIs(), &expr.Verdict{Kind: expr.VerdictJump, Chain: dir.chain + f.suffix})})
		}
	}

	if len(rs.Publish) > 0 {
		pre := b.chain(&nftables.Chain{Table: t, Name: "publish", Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
		for _, p := range rs.Publish {
			f := families()[0]
			if p.ContainerAddr.Is6() {
				f = families()[1]
			}
			proto, _ := protoNum(p.Proto, true)
			b.rule(&nftables.Rule{Table: t, Chain: pre, Exprs: flat(
				f.nfprotoIs(),
				&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p.HostPort)},
				&expr.Immediate{Register: reg1, Data: p.ContainerAddr.AsSlice()},
				&expr.Immediate{Register: reg2, Data: binaryutil.BigEndian.PutUint16(p.ContainerPort)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1, RegProtoMin: reg2, Specified: true},
			)})
		}
	}
	return nil
}

func flat(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch v := p.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		}
	}
	return out
}

func (f family) nfprotoIs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
	}
}

// addr loads the source or destination address at offset.
func (f family) addr(offset uint32, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.alen}
}

func ctBits(key expr.CtKey, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: key},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}

func ifPrefix(key expr.MetaKey) []expr.Any {
	// A cmp shorter than the register compares a prefix: nft's "bv*".
	return []expr.Any{&expr.Meta{Key: key, Register: reg1}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(IfPrefix)}}
}

// matchExprs matches m, whose address sets are named after the rule's
// chain and place in it.
func (f family) matchExprs(m Match, name string, intervalSet func(family, string, []Range) (*nftables.Set, error)) ([]expr.Any, error) {
	src, err := intervalSet(f, name+"_src", m.Src)
	if err != nil {
		return nil, err
	}
	dst, err := intervalSet(f, name+"_dst", m.Dst)
	if err != nil {
		return nil, err
	}
	e := flat(f.nfprotoIs(),
		f.addr(f.saddr, reg1), &expr.Lookup{SourceRegister: reg1, SetName: src.Name, SetID: src.ID},
		f.addr(f.daddr, reg1), &expr.Lookup{SourceRegister: reg1, SetName: dst.Name, SetID: dst.ID},
	)
	if m.Proto != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{m.Proto}})
	}
	if m.Port != 0 {
		e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(m.Port)})
	}
	return e, nil
}

// intervalElems encodes ranges as nftables interval elements: each range
// opens at From and closes (IntervalEnd) just past To. Like nft, an
// explicit closing element at the zero address marks the gap before the
// first range.
func intervalElems(f family, rs []Range) []nftables.SetElement {
	var out []nftables.SetElement
	if len(rs) > 0 && !rs[0].From.IsUnspecified() {
		out = append(out, nftables.SetElement{Key: make([]byte, f.alen), IntervalEnd: true})
	}
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.From.AsSlice()})
		if next := r.To.Next(); next.IsValid() {
			out = append(out, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}
