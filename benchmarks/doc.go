// Package benchmarks holds mdsync's Go benchmarks, load generator scenarios
// and their recorded results (RESULTS.md). Every benchmark that states a
// goal measures its raw baseline in the same process and run, so a ratio
// never compares figures from different machines or days.
package benchmarks
