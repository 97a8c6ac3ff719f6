//! The Evolve demo: two backends over bundled price data, and the command that starts them with
//! a daemon.
//!
//! | module | concern |
//! |---|---|
//! | [`data`] | the bundled daily closes (`data/prices.csv`) and how they were generated |
//! | [`forecast`] | forecasting methods (drift, exponential smoothing, linear trend) and the holdout backtest |
//! | [`analysis`] | returns, volatility, maximum drawdown, Sharpe ratio |
//! | [`server`] | the HTTP/1.1 backends (`/forecast`, `/analysis`, `/health`) |
//! | [`client`] | a JSON client of the daemon's API |
//! | [`up`] | `evolve-demo up`: backends + daemon + registry seed, stopped together |

pub mod analysis;
pub mod client;
pub mod data;
pub mod forecast;
pub mod server;
pub mod up;
