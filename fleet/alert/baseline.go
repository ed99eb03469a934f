package alert

import "math"

// ewma is a device's learned baseline of one metric: an exponentially
// weighted mean and variance. While fewer than 1/alpha observations have
// been learned, each weighs 1/n (a plain running mean and variance), so the
// first values do not bias the estimate towards zero variance.
type ewma struct {
	Mean float64 `json:"mean"`
	Var  float64 `json:"var"`
	N    int64   `json:"n"`
}

// sigma is the σ the band uses: the learned one, floored by b.MinSigma and
// by 1% of |mean|.
func (s *ewma) sigma(b *Baseline) float64 {
	return max(math.Sqrt(s.Var), b.MinSigma, 0.01*math.Abs(s.Mean))
}

// band returns the usual range mean ± K·σ.
func (s *ewma) band(b *Baseline) (lo, hi float64) {
	w := b.K * s.sigma(b)
	return s.Mean - w, s.Mean + w
}

// warm reports whether enough observations were learned to judge one.
func (s *ewma) warm(b *Baseline) bool { return s.N >= int64(b.Warmup) }

// outside reports whether x lies outside the band in the rule's direction.
// Before warm-up nothing is outside.
func (s *ewma) outside(b *Baseline, x float64) bool {
	if !s.warm(b) {
		return false
	}
	lo, hi := s.band(b)
	switch b.Direction {
	case DirectionAbove:
		return x > hi
	case DirectionBelow:
		return x < lo
	}
	return x > hi || x < lo
}

// learn adds x. Once warm, an x outside the band only moves the mean
// towards it, by at most α·K·σ, and leaves the variance alone: an anomaly
// neither widens the band nor quickly teaches itself as normal, while a
// lasting shift is learned within about shift/(α·K·σ) observations.
func (s *ewma) learn(b *Baseline, x float64) {
	if s.N == 0 {
		s.Mean, s.Var, s.N = x, 0, 1
		return
	}
	a := max(b.Alpha, 1/float64(s.N+1))
	warm := s.warm(b)
	s.N++
	if warm {
		if lo, hi := s.band(b); x < lo || x > hi {
			s.Mean += a * (min(max(x, lo), hi) - s.Mean)
			return
		}
	}
	diff := x - s.Mean
	incr := a * diff
	s.Mean += incr
	s.Var = (1 - a) * (s.Var + diff*incr)
}
