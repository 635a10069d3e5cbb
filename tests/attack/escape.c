/*
 * egress-escape: the attacker's side of the escape tests.
 *
 * One subcommand per escape attempt. Each prints exactly one JSON line on stdout:
 *   {"attempt":NAME,"ok":BOOL,"step":STEP,"errno":N,"error":TEXT,"sent":N,...}
 * ok: the socket was created AND the send syscall returned success (the data left
 * the syscall layer). step: the syscall that failed, or "done". Exit code 0 unless
 * the usage is wrong (2). Every socket gets 3 s send/receive timeouts; nothing loops
 * without a bound.
 *
 * Source-route semantics (Linux): for IP_OPTIONS / IP_RETOPTS with LSRR/SSRR the
 * kernel takes the FIRST address of the route as the next hop (the packet's IP
 * destination) and writes the sendto() address into the LAST slot. The
 * connect/sendmsg hooks only see the sendto() address. So `lsrr-opt HOP DST PORT`
 * builds the route [DST, HOP] and calls sendto(HOP:PORT): the hooks see HOP, the
 * wire packet goes to DST (IP dst = DST, option route data = [HOP]). IPv6 routing
 * headers work the same way (fl6_update_dst): the IPv6 destination on the wire is
 * the routing header's active segment, the sendto() address becomes the final
 * segment. Each such result line carries "hooked" (HOP) and "wire_dst" (DST).
 *
 * Build: cc -O2 -Wall -Werror -o egress-escape escape.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/seg6.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#ifndef IPPROTO_DCCP
#define IPPROTO_DCCP 33
#endif
#ifndef SOCK_DCCP
#define SOCK_DCCP 6
#endif
#ifndef IPV6_RTHDR_TYPE_0
#define IPV6_RTHDR_TYPE_0 0
#endif

#define TARGET_PORT 9999
#define PAYLOAD "egress-escape probe"

/* ---- result line ------------------------------------------------------------ */

static char extra[2048]; /* extra ,"key":value pairs appended to the line */

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void add_str(const char *key, const char *val)
{
	size_t n = strlen(extra);
	FILE *f = fmemopen(extra + n, sizeof(extra) - n, "w");
	if (!f)
		return;
	fprintf(f, ",\"%s\":", key);
	json_str(f, val);
	fclose(f);
}

static void add_int(const char *key, long val)
{
	size_t n = strlen(extra);
	snprintf(extra + n, sizeof(extra) - n, ",\"%s\":%ld", key, val);
}

/* Prints the result line. err == 0 and step "done": success. */
static int report(const char *attempt, int ok, const char *step, int err, long sent)
{
	printf("{\"attempt\":");
	json_str(stdout, attempt);
	printf(",\"ok\":%s,\"step\":", ok ? "true" : "false");
	json_str(stdout, step);
	printf(",\"errno\":%d,\"error\":", err);
	json_str(stdout, err ? strerror(err) : "");
	printf(",\"sent\":%ld%s}\n", sent, extra);
	fflush(stdout);
	return 0;
}

static int fail(const char *attempt, const char *step)
{
	int e = errno ? errno : EINVAL;
	return report(attempt, 0, step, e, -1);
}

/* ---- helpers ---------------------------------------------------------------- */

static void timeouts(int fd)
{
	struct timeval tv = { .tv_sec = 3, .tv_usec = 0 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Parses an IPv4 or IPv6 literal (and port) into ss; returns the family or -1. */
static int parse_addr(const char *s, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof(*a4);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof(*a6);
		return AF_INET6;
	}
	return -1;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: egress-escape SUBCOMMAND ARGS\n"
		"  raw DST | rawip DST4 | packet IFNAME DSTMAC DST4 | ping DST\n"
		"  udplite DST PORT | sctp DST PORT | dccp DST PORT | mptcp DST PORT\n"
		"  lsrr-opt HOP DST PORT | ssrr-opt HOP DST PORT | lsrr-cmsg HOP DST PORT\n"
		"  rthdr-opt HOP DST PORT [TYPE] | rthdr-cmsg HOP DST PORT [TYPE]\n"
		"  tcp DST PORT | udp DST PORT\n"
		"  passfd-send SOCKPATH [inet|inet6] | passfd-recv-connect SOCKPATH DST PORT\n"
		"  hold-tcp DST PORT SECONDS\n");
	return 2;
}

static int parse_port(const char *s)
{
	char *end;
	long p = strtol(s, &end, 10);
	if (*s == 0 || *end != 0 || p < 0 || p > 65535)
		return -1;
	return (int)p;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const void *data, size_t len)
{
	const uint8_t *p = data;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	return sum;
}

/* Builds IPv4 + UDP (to TARGET_PORT) with payload into buf; returns its length.
 * saddr 0 leaves the source to the kernel (IP_HDRINCL fills it); then the UDP
 * checksum is 0 (allowed for IPv4). */
static size_t build_ipv4_udp(uint8_t *buf, struct in_addr saddr, struct in_addr daddr)
{
	size_t plen = sizeof(PAYLOAD) - 1;
	struct iphdr *ip = (struct iphdr *)buf;
	struct udphdr *udp = (struct udphdr *)(buf + sizeof(*ip));
	memset(buf, 0, sizeof(*ip) + sizeof(*udp));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = htons(sizeof(*ip) + sizeof(*udp) + plen);
	ip->id = htons(0x4567);
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = saddr.s_addr;
	ip->daddr = daddr.s_addr;
	udp->source = htons(40000);
	udp->dest = htons(TARGET_PORT);
	udp->len = htons(sizeof(*udp) + plen);
	memcpy(buf + sizeof(*ip) + sizeof(*udp), PAYLOAD, plen);
	ip->check = htons(csum_fold(csum_add(0, ip, sizeof(*ip))));
	if (saddr.s_addr) {
		uint32_t s = 0;
		s = csum_add(s, &ip->saddr, 4);
		s = csum_add(s, &ip->daddr, 4);
		s += IPPROTO_UDP;
		s += sizeof(*udp) + plen;
		s = csum_add(s, udp, sizeof(*udp) + plen);
		uint16_t c = csum_fold(s);
		udp->check = htons(c ? c : 0xffff);
	}
	return sizeof(*ip) + sizeof(*udp) + plen;
}

/* Reads one reply (up to a newline or 3 s) into the "reply" field. */
static void read_reply(int fd)
{
	char buf[512];
	size_t got = 0;
	while (got < sizeof(buf) - 1) {
		ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(buf, '\n', got))
			break;
	}
	buf[got] = 0;
	add_str("reply", buf);
}

/* connect + send "probe\n" + read a reply line on an already created socket. */
static int stream_exchange(const char *attempt, int fd, const struct sockaddr_storage *ss,
			   socklen_t len)
{
	if (connect(fd, (const struct sockaddr *)ss, len) != 0)
		return fail(attempt, "connect");
	ssize_t n = send(fd, "probe\n", 6, MSG_NOSIGNAL);
	if (n < 0)
		return fail(attempt, "send");
	read_reply(fd);
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

static int stream_attempt(const char *attempt, int proto, int type, const char *dst,
			  const char *port_s)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int port = parse_port(port_s);
	int af = parse_addr(dst, port, &ss, &len);
	if (af < 0 || port < 0)
		return usage();
	int fd = socket(af, type, proto);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	return stream_exchange(attempt, fd, &ss, len);
}

static int dgram_attempt(const char *attempt, int proto, const char *dst, const char *port_s)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int port = parse_port(port_s);
	int af = parse_addr(dst, port, &ss, &len);
	if (af < 0 || port < 0)
		return usage();
	int fd = socket(af, SOCK_DGRAM, proto);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	ssize_t n = sendto(fd, "probe\n", 6, 0, (struct sockaddr *)&ss, len);
	if (n < 0)
		return fail(attempt, "sendto");
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

/* ---- raw, rawip, packet, ping ----------------------------------------------- */

static int do_raw(const char *dst)
{
	const char *attempt = "raw";
	struct sockaddr_storage ss;
	socklen_t len;
	int af = parse_addr(dst, 0, &ss, &len);
	if (af < 0)
		return usage();
	int fd = socket(af, SOCK_RAW, IPPROTO_UDP);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	if (af == AF_INET6) {
		/* Let the kernel compute the UDP checksum (offset 6 in the UDP header). */
		int off = 6;
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_CHECKSUM, &off, sizeof(off)) != 0)
			return fail(attempt, "setsockopt");
	}
	uint8_t buf[64];
	size_t plen = sizeof(PAYLOAD) - 1;
	struct udphdr *udp = (struct udphdr *)buf;
	memset(udp, 0, sizeof(*udp));
	udp->source = htons(40000);
	udp->dest = htons(TARGET_PORT);
	udp->len = htons(sizeof(*udp) + plen);
	memcpy(buf + sizeof(*udp), PAYLOAD, plen);
	ssize_t n = sendto(fd, buf, sizeof(*udp) + plen, 0, (struct sockaddr *)&ss, len);
	if (n < 0)
		return fail(attempt, "sendto");
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

static int do_rawip(const char *dst)
{
	const char *attempt = "rawip";
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_addr(dst, 0, &ss, &len) != AF_INET)
		return usage();
	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	int one = 1;
	if (setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)) != 0)
		return fail(attempt, "setsockopt");
	uint8_t buf[128];
	struct in_addr any = { 0 };
	size_t plen = build_ipv4_udp(buf, any, ((struct sockaddr_in *)&ss)->sin_addr);
	ssize_t n = sendto(fd, buf, plen, 0, (struct sockaddr *)&ss, len);
	if (n < 0)
		return fail(attempt, "sendto");
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (b[i] > 255)
			return -1;
		mac[i] = (uint8_t)b[i];
	}
	return 0;
}

static int do_packet(const char *ifname, const char *mac_s, const char *dst)
{
	const char *attempt = "packet";
	struct sockaddr_storage ss;
	socklen_t len;
	uint8_t mac[6];
	if (parse_addr(dst, 0, &ss, &len) != AF_INET || parse_mac(mac_s, mac) != 0 ||
	    strlen(ifname) >= IFNAMSIZ)
		return usage();
	int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	/* SIOCGIFADDR works on the packet socket itself (dev_ioctl): no second socket. */
	ifr.ifr_addr.sa_family = AF_INET;
	if (ioctl(fd, SIOCGIFADDR, &ifr) != 0)
		return fail(attempt, "ioctl");
	struct in_addr src = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr;
	unsigned int ifindex = if_nametoindex(ifname);
	if (ifindex == 0)
		return fail(attempt, "if_nametoindex");
	add_str("src", inet_ntoa(src));
	uint8_t buf[128];
	size_t plen = build_ipv4_udp(buf, src, ((struct sockaddr_in *)&ss)->sin_addr);
	struct sockaddr_ll ll;
	memset(&ll, 0, sizeof(ll));
	ll.sll_family = AF_PACKET;
	ll.sll_protocol = htons(ETH_P_IP);
	ll.sll_ifindex = (int)ifindex;
	ll.sll_halen = 6;
	memcpy(ll.sll_addr, mac, 6);
	ssize_t n = sendto(fd, buf, plen, 0, (struct sockaddr *)&ll, sizeof(ll));
	if (n < 0)
		return fail(attempt, "sendto");
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

static int do_ping(const char *dst)
{
	const char *attempt = "ping";
	struct sockaddr_storage ss;
	socklen_t len;
	int af = parse_addr(dst, 0, &ss, &len);
	if (af < 0)
		return usage();
	int fd = socket(af, SOCK_DGRAM, af == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	/* type, code, checksum (the kernel computes it), id (the kernel sets it), seq. */
	uint8_t buf[8 + sizeof(PAYLOAD) - 1];
	memset(buf, 0, sizeof(buf));
	buf[0] = af == AF_INET ? 8 : 128;
	buf[7] = 1;
	memcpy(buf + 8, PAYLOAD, sizeof(PAYLOAD) - 1);
	ssize_t n = sendto(fd, buf, sizeof(buf), 0, (struct sockaddr *)&ss, len);
	if (n < 0)
		return fail(attempt, "sendto");
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

/* ---- IPv4 source routes ----------------------------------------------------- */

/* Route [DST, HOP], padded with NOP/EOL to a multiple of 4: the kernel sends to DST
 * and writes the sendto() address (HOP) into the last slot. */
static size_t build_srr(uint8_t *opt, uint8_t type, struct in_addr hop, struct in_addr dst)
{
	opt[0] = IPOPT_NOP; /* leading NOP: the option itself is 11 bytes */
	opt[1] = type;
	opt[2] = 3 + 8;
	opt[3] = 4;
	memcpy(opt + 4, &dst, 4);
	memcpy(opt + 8, &hop, 4);
	return 12;
}

static int srr_attempt(const char *attempt, uint8_t type, int use_cmsg, const char *hop_s,
		       const char *dst_s, const char *port_s)
{
	struct sockaddr_storage hop, dst;
	socklen_t hlen, dlen;
	int port = parse_port(port_s);
	if (port < 0 || parse_addr(hop_s, port, &hop, &hlen) != AF_INET ||
	    parse_addr(dst_s, port, &dst, &dlen) != AF_INET)
		return usage();
	add_str("hooked", hop_s);
	add_str("wire_dst", dst_s);
	uint8_t opt[40];
	size_t olen = build_srr(opt, type, ((struct sockaddr_in *)&hop)->sin_addr,
				((struct sockaddr_in *)&dst)->sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	ssize_t n;
	if (!use_cmsg) {
		if (setsockopt(fd, IPPROTO_IP, IP_OPTIONS, opt, olen) != 0)
			return fail(attempt, "setsockopt");
		n = sendto(fd, "probe\n", 6, 0, (struct sockaddr *)&hop, hlen);
		if (n < 0)
			return fail(attempt, "sendto");
	} else {
		union {
			char buf[CMSG_SPACE(40)];
			struct cmsghdr align;
		} ctl;
		memset(&ctl, 0, sizeof(ctl));
		struct iovec iov = { .iov_base = "probe\n", .iov_len = 6 };
		struct msghdr msg = {
			.msg_name = &hop,
			.msg_namelen = hlen,
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = ctl.buf,
			.msg_controllen = CMSG_SPACE(olen),
		};
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = IP_RETOPTS;
		c->cmsg_len = CMSG_LEN(olen);
		memcpy(CMSG_DATA(c), opt, olen);
		n = sendmsg(fd, &msg, 0);
		if (n < 0)
			return fail(attempt, "sendmsg");
	}
	close(fd);
	return report(attempt, 1, "done", 0, n);
}

/* ---- IPv6 routing headers --------------------------------------------------- */

/* Builds a routing header of `type` so that the wire destination is DST and the
 * sendto() address (HOP) is the final one. Returns its length or 0. */
static size_t build_rthdr(uint8_t *buf, size_t cap, int type, const struct in6_addr *hop,
			  const struct in6_addr *dst)
{
	memset(buf, 0, cap);
	if (type == 0) {
		/* RFC 3542 API; the kernel copies addr[0] to the destination. */
		socklen_t sp = inet6_rth_space(IPV6_RTHDR_TYPE_0, 2);
		if (sp == 0 || sp > cap || !inet6_rth_init(buf, sp, IPV6_RTHDR_TYPE_0, 2))
			return 0;
		if (inet6_rth_add(buf, dst) != 0 || inet6_rth_add(buf, hop) != 0)
			return 0;
		return sp;
	}
	if (type == 4) {
		/* segments[0] is the final segment (the kernel puts the sendto() address
		 * there); segments[segments_left] is the wire destination. */
		struct ipv6_sr_hdr *srh = (struct ipv6_sr_hdr *)buf;
		size_t sp = sizeof(*srh) + 2 * sizeof(struct in6_addr);
		if (sp > cap)
			return 0;
		srh->nexthdr = 0; /* the kernel fills it */
		srh->hdrlen = (uint8_t)((sp >> 3) - 1);
		srh->type = 4;
		srh->segments_left = 1;
		srh->first_segment = 1;
		srh->flags = 0;
		srh->tag = 0;
		memcpy(&srh->segments[0], hop, sizeof(*hop));
		memcpy(&srh->segments[1], dst, sizeof(*dst));
		return sp;
	}
	if (type == 2) {
		/* Mobile IPv6 type 2: one address, segments_left 1 (CONFIG_IPV6_MIP6). */
		size_t sp = 8 + sizeof(struct in6_addr);
		if (sp > cap)
			return 0;
		buf[1] = 2; /* hdrlen */
		buf[2] = 2; /* type */
		buf[3] = 1; /* segments left */
		memcpy(buf + 8, dst, sizeof(*dst));
		return sp;
	}
	return 0;
}

static int rthdr_attempt(const char *attempt, int use_cmsg, const char *hop_s,
			 const char *dst_s, const char *port_s, const char *type_s)
{
	struct sockaddr_storage hop, dst;
	socklen_t hlen, dlen;
	int port = parse_port(port_s);
	if (port < 0 || parse_addr(hop_s, port, &hop, &hlen) != AF_INET6 ||
	    parse_addr(dst_s, port, &dst, &dlen) != AF_INET6)
		return usage();
	const struct in6_addr *h = &((struct sockaddr_in6 *)&hop)->sin6_addr;
	const struct in6_addr *d = &((struct sockaddr_in6 *)&dst)->sin6_addr;
	add_str("hooked", hop_s);
	add_str("wire_dst", dst_s);
	/* Types to try, in order; a 4th argument forces one. */
	int types_default_opt[] = { 0, 4, 2 };
	int types_default_cmsg[] = { 4, 0, 2 };
	int forced[1];
	int *types = use_cmsg ? types_default_cmsg : types_default_opt;
	int ntypes = 3;
	if (type_s) {
		forced[0] = atoi(type_s);
		types = forced;
		ntypes = 1;
	}
	int fd = socket(AF_INET6, SOCK_DGRAM, IPPROTO_UDP);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	char tried[256] = "";
	uint8_t rth[256];
	int type = -1;
	int err = 0;
	ssize_t n = -1;
	const char *step = "setsockopt";
	int first_type = -1, first_err = 0;
	const char *first_step = step;
	for (int i = 0; i < ntypes; i++) {
		type = types[i];
		size_t rlen = build_rthdr(rth, sizeof(rth), type, h, d);
		if (rlen == 0) {
			err = EINVAL;
			step = "build";
			snprintf(tried + strlen(tried), sizeof(tried) - strlen(tried),
				 "%s%d:build", *tried ? "," : "", type);
			continue;
		}
		if (!use_cmsg) {
			step = "setsockopt";
			if (setsockopt(fd, IPPROTO_IPV6, IPV6_RTHDR, rth, rlen) != 0) {
				err = errno;
			} else {
				err = 0;
				step = "sendto";
				n = sendto(fd, "probe\n", 6, 0, (struct sockaddr *)&hop, hlen);
				if (n < 0)
					err = errno;
			}
		} else {
			union {
				char buf[CMSG_SPACE(256)];
				struct cmsghdr align;
			} ctl;
			memset(&ctl, 0, sizeof(ctl));
			struct iovec iov = { .iov_base = "probe\n", .iov_len = 6 };
			struct msghdr msg = {
				.msg_name = &hop,
				.msg_namelen = hlen,
				.msg_iov = &iov,
				.msg_iovlen = 1,
				.msg_control = ctl.buf,
				.msg_controllen = CMSG_SPACE(rlen),
			};
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = IPPROTO_IPV6;
			c->cmsg_type = IPV6_RTHDR;
			c->cmsg_len = CMSG_LEN(rlen);
			memcpy(CMSG_DATA(c), rth, rlen);
			step = "sendmsg";
			n = sendmsg(fd, &msg, 0);
			err = n < 0 ? errno : 0;
		}
		snprintf(tried + strlen(tried), sizeof(tried) - strlen(tried), "%s%d:%s:%d",
			 *tried ? "," : "", type, step, err);
		/* Only a refused header moves on to the next type; a refused send is the
		 * answer (the header was accepted). */
		if (err == 0 || strcmp(step, "sendto") == 0)
			break;
		if (first_type < 0) {
			first_type = type;
			first_err = err;
			first_step = step;
		}
	}
	/* Every type refused: report the first (preferred) one. */
	if (err && strcmp(step, "sendto") != 0 && first_type >= 0) {
		type = first_type;
		err = first_err;
		step = first_step;
	}
	add_int("rthdr_type", type);
	add_str("tried", tried);
	close(fd);
	if (err)
		return report(attempt, 0, step, err, -1);
	return report(attempt, 1, "done", 0, n);
}

/* ---- passing a socket between processes --------------------------------------- */

static int unix_addr(const char *path, struct sockaddr_un *un)
{
	memset(un, 0, sizeof(*un));
	un->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(un->sun_path))
		return -1;
	strcpy(un->sun_path, path);
	return 0;
}

/* FAMILY: "inet" (default) or "inet6" (then an IPv4 DST is connected to as a
 * v4-mapped address, through the IPv6 hooks). */
static int do_passfd_send(const char *path, const char *family)
{
	const char *attempt = "passfd-send";
	struct sockaddr_un un;
	if (unix_addr(path, &un) != 0)
		return usage();
	int af = AF_INET;
	if (family && !strcmp(family, "inet6"))
		af = AF_INET6;
	else if (family && strcmp(family, "inet"))
		return usage();
	add_str("family", af == AF_INET ? "inet" : "inet6");
	int tcp = socket(af, SOCK_STREAM, IPPROTO_TCP);
	if (tcp < 0)
		return fail(attempt, "socket");
	timeouts(tcp);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0)
		return fail(attempt, "unix-socket");
	unlink(path);
	if (bind(l, (struct sockaddr *)&un, sizeof(un)) != 0)
		return fail(attempt, "bind");
	chmod(path, 0777);
	if (listen(l, 1) != 0)
		return fail(attempt, "listen");
	/* Bounded: 30 s for the peer to come. */
	struct timeval tv = { .tv_sec = 30, .tv_usec = 0 };
	setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	int c = accept(l, NULL, NULL);
	if (c < 0)
		return fail(attempt, "accept");
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = { .iov_base = "F", .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &tcp, sizeof(int));
	ssize_t n = sendmsg(c, &msg, 0);
	if (n < 0)
		return fail(attempt, "sendmsg");
	/* Wait (bounded) for the peer to close. */
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char b;
	while (recv(c, &b, 1, 0) > 0)
		;
	close(c);
	close(l);
	unlink(path);
	return report(attempt, 1, "done", 0, n);
}

static int do_passfd_recv_connect(const char *path, const char *dst, const char *port_s)
{
	const char *attempt = "passfd-recv-connect";
	struct sockaddr_un un;
	struct sockaddr_storage ss;
	socklen_t len;
	int port = parse_port(port_s);
	if (unix_addr(path, &un) != 0 || port < 0)
		return usage();
	int af = parse_addr(dst, port, &ss, &len);
	if (af < 0)
		return usage();
	int u = socket(AF_UNIX, SOCK_STREAM, 0);
	if (u < 0)
		return fail(attempt, "unix-socket");
	timeouts(u);
	/* The sender may still be starting: retry (bounded, 5 s). */
	int connected = 0;
	for (int i = 0; i < 100; i++) {
		if (connect(u, (struct sockaddr *)&un, sizeof(un)) == 0) {
			connected = 1;
			break;
		}
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	if (!connected)
		return fail(attempt, "unix-connect");
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	char b;
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	if (recvmsg(u, &msg, 0) <= 0)
		return fail(attempt, "recvmsg");
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
		errno = EBADMSG;
		return fail(attempt, "recvmsg");
	}
	int fd;
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	timeouts(fd);
	/* An AF_INET6 socket reaches an IPv4 DST as v4-mapped. */
	int dom = 0;
	socklen_t dl = sizeof(dom);
	getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl);
	if (dom == AF_INET6 && af == AF_INET) {
		struct sockaddr_in6 m;
		memset(&m, 0, sizeof(m));
		m.sin6_family = AF_INET6;
		m.sin6_port = htons(port);
		m.sin6_addr.s6_addr[10] = 0xff;
		m.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&m.sin6_addr.s6_addr[12], &((struct sockaddr_in *)&ss)->sin_addr, 4);
		memcpy(&ss, &m, sizeof(m));
		len = sizeof(m);
	}
	int r = stream_exchange(attempt, fd, &ss, len);
	close(u);
	return r;
}

/* ---- socket held across a cgroup move ------------------------------------------ */

static int do_hold_tcp(const char *dst, const char *port_s, const char *secs_s)
{
	const char *attempt = "hold-tcp";
	struct sockaddr_storage ss;
	socklen_t len;
	int port = parse_port(port_s);
	int af = parse_addr(dst, port, &ss, &len);
	int secs = atoi(secs_s);
	if (af < 0 || port < 0 || secs < 0)
		return usage();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int fd = socket(af, SOCK_STREAM, IPPROTO_TCP);
	if (fd < 0)
		return fail(attempt, "socket");
	timeouts(fd);
	printf("{\"attempt\":\"hold\",\"ready\":true,\"pid\":%d}\n", (int)getpid());
	fflush(stdout);
	struct timespec ts = { .tv_sec = secs, .tv_nsec = 0 };
	int sig = sigtimedwait(&set, NULL, &ts);
	add_int("signalled", sig == SIGUSR1);
	return stream_exchange(attempt, fd, &ss, len);
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	int n = argc - 2;
	char **a = argv + 2;
	errno = 0;
	if (!strcmp(cmd, "raw") && n == 1)
		return do_raw(a[0]);
	if (!strcmp(cmd, "rawip") && n == 1)
		return do_rawip(a[0]);
	if (!strcmp(cmd, "packet") && n == 3)
		return do_packet(a[0], a[1], a[2]);
	if (!strcmp(cmd, "ping") && n == 1)
		return do_ping(a[0]);
	if (!strcmp(cmd, "udplite") && n == 2)
		return dgram_attempt("udplite", IPPROTO_UDPLITE, a[0], a[1]);
	if (!strcmp(cmd, "udp") && n == 2)
		return dgram_attempt("udp", IPPROTO_UDP, a[0], a[1]);
	if (!strcmp(cmd, "sctp") && n == 2)
		return stream_attempt("sctp", IPPROTO_SCTP, SOCK_STREAM, a[0], a[1]);
	if (!strcmp(cmd, "dccp") && n == 2)
		return stream_attempt("dccp", IPPROTO_DCCP, SOCK_DCCP, a[0], a[1]);
	if (!strcmp(cmd, "mptcp") && n == 2)
		return stream_attempt("mptcp", IPPROTO_MPTCP, SOCK_STREAM, a[0], a[1]);
	if (!strcmp(cmd, "tcp") && n == 2)
		return stream_attempt("tcp", IPPROTO_TCP, SOCK_STREAM, a[0], a[1]);
	if (!strcmp(cmd, "lsrr-opt") && n == 3)
		return srr_attempt("lsrr-opt", IPOPT_LSRR, 0, a[0], a[1], a[2]);
	if (!strcmp(cmd, "ssrr-opt") && n == 3)
		return srr_attempt("ssrr-opt", IPOPT_SSRR, 0, a[0], a[1], a[2]);
	if (!strcmp(cmd, "lsrr-cmsg") && n == 3)
		return srr_attempt("lsrr-cmsg", IPOPT_LSRR, 1, a[0], a[1], a[2]);
	if (!strcmp(cmd, "rthdr-opt") && (n == 3 || n == 4))
		return rthdr_attempt("rthdr-opt", 0, a[0], a[1], a[2], n == 4 ? a[3] : NULL);
	if (!strcmp(cmd, "rthdr-cmsg") && (n == 3 || n == 4))
		return rthdr_attempt("rthdr-cmsg", 1, a[0], a[1], a[2], n == 4 ? a[3] : NULL);
	if (!strcmp(cmd, "passfd-send") && (n == 1 || n == 2))
		return do_passfd_send(a[0], n == 2 ? a[1] : NULL);
	if (!strcmp(cmd, "passfd-recv-connect") && n == 3)
		return do_passfd_recv_connect(a[0], a[1], a[2]);
	if (!strcmp(cmd, "hold-tcp") && n == 3)
		return do_hold_tcp(a[0], a[1], a[2]);
	return usage();
}
