/* The bits of libc the compiler may call, an RNG, the command line parser. */
#include "kernel.h"

void *memset(void *d, int c, size_t n)
{
	void *r = d;

	asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *r = d;

	asm volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) :: "memory");
	return r;
}

void *memmove(void *d, const void *s, size_t n)
{
	if ((unsigned long)d <= (unsigned long)s || (unsigned long)d >= (unsigned long)s + n)
		return memcpy(d, s, n);
	u8 *dd = d;
	const u8 *ss = s;
	while (n--)
		dd[n] = ss[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

void strlcpy(char *d, const char *s, size_t n)
{
	size_t i = 0;

	if (!n)
		return;
	for (; i + 1 < n && s[i]; i++)
		d[i] = s[i];
	d[i] = 0;
}

u64 splitmix64(u64 *state)
{
	u64 z = (*state += 0x9e3779b97f4a7c15UL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
	return z ^ (z >> 31);
}

static int parse_num(const char *s, int n, unsigned long *out)
{
	unsigned long v = 0;
	int base = 10, i = 0;

	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
	}
	if (i >= n)
		return -1;
	for (; i < n; i++) {
		int d;
		char c = s[i];
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (base == 16 && c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v * base + d;
	}
	*out = v;
	return 0;
}

static int key_is(const char *s, int n, const char *key)
{
	int k = strlen(key);

	return n == k && !memcmp(s, key, k);
}

/* "scenario=N seed=S runs=R workers=W iters=I cpus=C tick_us=T fault=F"; other words ignored. */
void parse_cmdline(const char *s, struct params *p)
{
	p->scenario = -1;
	p->seed = 1;
	p->runs = p->workers = p->iters = -1;
	p->cpus = -1;
	p->tick_us = -1;
	p->fault = 0;
	while (*s) {
		while (*s == ' ' || *s == '\t')
			s++;
		const char *w = s;
		while (*s && *s != ' ' && *s != '\t')
			s++;
		const char *eq = w;
		while (eq < s && *eq != '=')
			eq++;
		if (eq == s)
			continue;
		unsigned long v;
		if (parse_num(eq + 1, s - eq - 1, &v))
			continue;
		int kn = eq - w;
		if (key_is(w, kn, "scenario"))
			p->scenario = v;
		else if (key_is(w, kn, "seed"))
			p->seed = v;
		else if (key_is(w, kn, "runs"))
			p->runs = v;
		else if (key_is(w, kn, "workers"))
			p->workers = v;
		else if (key_is(w, kn, "iters"))
			p->iters = v;
		else if (key_is(w, kn, "cpus"))
			p->cpus = v;
		else if (key_is(w, kn, "tick_us"))
			p->tick_us = v;
		else if (key_is(w, kn, "fault"))
			p->fault = v;
	}
}
