//! Distances between points on the earth, fast enough for the hot path.

/// Mean earth radius used by every distance in the daemon.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// A validated point (degrees), with the radians the distance needs kept
/// alongside so that the hot path does no conversions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeoPoint {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
    lat_rad: f64,
    lon_rad: f64,
    cos_lat: f64,
}

impl GeoPoint {
    /// Returns `None` unless both coordinates are finite and in range.
    pub fn new(lat: f64, lon: f64) -> Option<GeoPoint> {
        let valid = lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0;
        valid.then(|| GeoPoint {
            lat,
            lon,
            lat_rad: lat.to_radians(),
            lon_rad: lon.to_radians(),
            cos_lat: lat.to_radians().cos(),
        })
    }

    /// Distance in km by the equirectangular approximation: within 0.5 % of
    /// the great circle at the scale of a market (< 1000 km) and about ten
    /// times cheaper than haversine, which matters when every order measures
    /// every eligible node.
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let mut delta_lon = (other.lon_rad - self.lon_rad).abs();
        if delta_lon > std::f64::consts::PI {
            delta_lon = 2.0 * std::f64::consts::PI - delta_lon;
        }
        let x = delta_lon * 0.5 * (self.cos_lat + other.cos_lat);
        let y = other.lat_rad - self.lat_rad;
        EARTH_RADIUS_KM * (x * x + y * y).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_close_to_great_circle() {
        // Proves the approximation stays within 1 % of the known Berlin-Paris distance (878 km).
        let berlin = GeoPoint::new(52.52, 13.405).unwrap();
        let paris = GeoPoint::new(48.8566, 2.3522).unwrap();
        let km = berlin.distance_km(&paris);
        assert!((km - 878.0).abs() < 9.0, "got {km}");
        assert_eq!(berlin.distance_km(&berlin), 0.0);
    }

    #[test]
    fn out_of_range_points_are_refused() {
        // Proves a point outside the globe or NaN never becomes a GeoPoint.
        assert!(GeoPoint::new(91.0, 0.0).is_none());
        assert!(GeoPoint::new(0.0, -180.5).is_none());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_none());
    }
}
