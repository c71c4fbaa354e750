package network

import (
	"fmt"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Per-interface settings are made through rtnetlink rather than
// /proc/sys/net: /proc/sys/net shows the namespace of the thread that opens
// it, so writing there means moving an OS thread into the host namespace
// for every container, which costs more than the rest of an attach.

// IPV4_DEVCONF_* from <linux/ip.h> (IFLA_INET_CONF attribute types).
const (
	devconfProxyARP        = 3
	devconfAcceptRedirects = 4
	devconfRPFilter        = 8
)

// From <linux/neighbour.h>, for RTM_SETNEIGHTBL.
const (
	ndtaName          = 1
	ndtaParms         = 6
	ndtpaIfindex      = 1
	ndtpaProxyDelay   = 13
	in6AddrGenModeNon = 1 // IN6_ADDR_GEN_MODE_NONE
)

// rtnl is a route netlink socket in the host namespace for the requests
// the netlink library has no call for.
type rtnl struct {
	mu sync.Mutex // one request on the socket at a time, so replies match
	sh *nl.SocketHandle
}

func newRtnl(ns netns.NsHandle) (*rtnl, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("route netlink socket: %w", err)
	}
	return &rtnl{sh: &nl.SocketHandle{Socket: s}}, nil
}

func (r *rtnl) close() { r.sh.Socket.Close() }

func (r *rtnl) do(typ int, data ...nl.NetlinkRequestData) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	req := &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: uint16(typ), Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK},
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: r.sh},
	}
	for _, d := range data {
		req.AddData(d)
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// hostEndConf sets what a container's host end needs in one RTM_SETLINK:
// proxy ARP, strict reverse-path filtering, no redirects accepted, and no
// automatic IPv6 link-local address (the end carries the fixed gateway
// address fe80::1 instead, so there is no duplicate address detection to
// wait for).
func (r *rtnl) hostEndConf(index int) error {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	inet := spec.AddRtAttr(unix.AF_INET, nil)
	conf := inet.AddRtAttr(unix.IFLA_INET_CONF, nil)
	for _, kv := range [][2]uint32{{devconfProxyARP, 1}, {devconfRPFilter, 1}, {devconfAcceptRedirects, 0}} {
		conf.AddRtAttr(int(kv[0]), nl.Uint32Attr(kv[1]))
	}
	inet6 := spec.AddRtAttr(unix.AF_INET6, nil)
	inet6.AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNon})
	if err := r.do(unix.RTM_SETLINK, msg, spec); err != nil {
		return fmt.Errorf("interface settings: %w", err)
	}
	// A proxy ARP answer is otherwise delayed by up to 0.8 s.
	ndt := &ndtmsg{family: unix.AF_INET}
	parms := nl.NewRtAttr(ndtaParms, nil)
	parms.AddRtAttr(ndtpaIfindex, nl.Uint32Attr(uint32(index)))
	parms.AddRtAttr(ndtpaProxyDelay, nl.Uint64Attr(0))
	if err := r.do(unix.RTM_SETNEIGHTBL, ndt, nl.NewRtAttr(ndtaName, nl.ZeroTerminated("arp_cache")), parms); err != nil {
		return fmt.Errorf("proxy_delay: %w", err)
	}
	return nil
}

// ndtmsg is struct ndtmsg: the family and padding to four bytes.
type ndtmsg struct{ family uint8 }

func (m *ndtmsg) Len() int { return 4 }

func (m *ndtmsg) Serialize() []byte { return []byte{m.family, 0, 0, 0} }
